#ifndef RADAR_CLZ4_SHIM_H
#define RADAR_CLZ4_SHIM_H
#include <lz4.h>
#include <lz4frame.h>
#endif
