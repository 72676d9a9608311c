#ifndef RADAR_CLIBDEFLATE_SHIM_H
#define RADAR_CLIBDEFLATE_SHIM_H
// libdeflate: whole-buffer zlib decompression and CRC-32 for the PNG fast path.
#include <libdeflate.h>
#endif
