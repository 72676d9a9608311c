#ifndef RADAR_CTURBOJPEG_SHIM_H
#define RADAR_CTURBOJPEG_SHIM_H
// libjpeg-turbo 2.1's tj* API (Debian 12 has no tj3*).
#include <turbojpeg.h>
#endif
