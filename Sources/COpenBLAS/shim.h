#ifndef RADAR_COPENBLAS_SHIM_H
#define RADAR_COPENBLAS_SHIM_H
// OpenBLAS's cblas.h also declares openblas_set_num_threads / openblas_get_config / get_corename.
#include <cblas.h>
#endif
