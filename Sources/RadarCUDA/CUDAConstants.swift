/// The numbers from CUDA's headers that `DriverAPI` passes to the driver, cuBLAS and cuFFT, under
/// their C names (hence the spelling). Nothing links against CUDA, so nothing would catch a wrong
/// one before a GPU run: `CUDAABIGateTests` compiles NVIDIA's headers of CUDA 12 and 13 and
/// compares every field here, by reflection, with the header's value.
struct CUDAConstants {
    // cuda.h
    let CUDA_SUCCESS: Int32 = 0
    let CUDA_ERROR_OUT_OF_MEMORY: Int32 = 2
    let CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: Int32 = 75
    let CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: Int32 = 76
    let CU_STREAM_NON_BLOCKING: UInt32 = 1
    let CU_EVENT_DISABLE_TIMING: UInt32 = 2
    let CU_EVENT_WAIT_DEFAULT: UInt32 = 0
    // library_types.h
    let CUDA_R_32F: Int32 = 0
    let CUDA_R_16BF: Int32 = 14
    // cublas_api.h
    let CUBLAS_STATUS_SUCCESS: Int32 = 0
    let CUBLAS_OP_N: Int32 = 0
    let CUBLAS_OP_T: Int32 = 1
    let CUBLAS_DEFAULT_MATH: Int32 = 0
    let CUBLAS_TF32_TENSOR_OP_MATH: Int32 = 3
    let CUBLAS_COMPUTE_32F: Int32 = 68
    let CUBLAS_COMPUTE_32F_FAST_TF32: Int32 = 77
    let CUBLAS_GEMM_DEFAULT: Int32 = -1
    // cublasLt.h
    let CUBLASLT_MATMUL_DESC_TRANSA: Int32 = 3
    let CUBLASLT_MATMUL_DESC_TRANSB: Int32 = 4
    let CUBLASLT_MATMUL_DESC_EPILOGUE: Int32 = 7
    let CUBLASLT_MATMUL_DESC_BIAS_POINTER: Int32 = 8
    let CUBLASLT_EPILOGUE_DEFAULT: UInt32 = 1
    let CUBLASLT_EPILOGUE_BIAS: UInt32 = 4
    let CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: Int32 = 5
    let CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: Int32 = 6
    let CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: Int32 = 1
    let CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: Int32 = 5
    let CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: Int32 = 6
    let CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: Int32 = 7
    let CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: Int32 = 8
    // cufft.h
    let CUFFT_SUCCESS: Int32 = 0
    let CUFFT_INVALID_PLAN: Int32 = 1
    let CUFFT_ALLOC_FAILED: Int32 = 2
    let CUFFT_INVALID_VALUE: Int32 = 4
    let CUFFT_INTERNAL_ERROR: Int32 = 5
    let CUFFT_EXEC_FAILED: Int32 = 6
    let CUFFT_SETUP_FAILED: Int32 = 7
    let CUFFT_INVALID_SIZE: Int32 = 8
    let CUFFT_R2C: Int32 = 0x2a
    // nvrtc.h
    let NVRTC_SUCCESS: Int32 = 0

    static let values = CUDAConstants()
}
