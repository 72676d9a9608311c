#ifndef RADAR_CFFTW_SHIM_H
#define RADAR_CFFTW_SHIM_H
#include <fftw3.h>
// FFTW's flag constants are plain #defines with shifts; restate the ones we use as values.
static inline unsigned radar_fftw_estimate(void) { return FFTW_ESTIMATE; }
static inline unsigned radar_fftw_measure(void) { return FFTW_MEASURE; }
#endif
