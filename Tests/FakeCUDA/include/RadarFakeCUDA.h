#ifndef RADAR_FAKE_CUDA_H
#define RADAR_FAKE_CUDA_H
// libRadarFakeCUDA.so exports the CUDA driver API, cuBLAS and cuFFT functions that DriverAPI
// loads (see fake_cuda.cpp); nothing includes this header. Tests link it under the names
// libcuda.so.1, libcublas.so.13 and libcufft.so.12 in a folder named by RADAR_CUDA_LIBS.
#endif
