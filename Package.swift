// swift-tools-version:6.0
import PackageDescription

// RADAR: a distributed data-parallel deepfake-detector trainer. See README.md and ../shared/design.
let package = Package(
    name: "radar",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "radar", targets: ["radar"]),
        .executable(name: "radar-worker", targets: ["radar-worker"]),
        .executable(name: "radar-coordinator", targets: ["radar-coordinator"]),
        .library(name: "RadarEngine", targets: ["RadarEngine"]),
        .library(name: "RadarCPU", targets: ["RadarCPU"]),
        .library(name: "RadarCUDA", targets: ["RadarCUDA"]),
        .library(name: "RadarCore", targets: ["RadarCore"]),
        .library(name: "RadarDistributed", targets: ["RadarDistributed"]),
        // For tests only: a stand-in libcuda/cuBLAS/cuFFT over the emulator, so DriverAPI itself runs in CI.
        .library(name: "RadarFakeCUDA", type: .dynamic, targets: ["CFakeCUDA"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // One system-library target per C library, each a module map plus a shim header.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CFFTW", pkgConfig: "fftw3f", providers: [.apt(["libfftw3-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CLibDeflate", pkgConfig: "libdeflate", providers: [.apt(["libdeflate-dev"])]),
        .systemLibrary(name: "CTurboJPEG", pkgConfig: "libturbojpeg", providers: [.apt(["libturbojpeg0-dev"])]),
        .systemLibrary(name: "CWebP", pkgConfig: "libwebp", providers: [.apt(["libwebp-dev"])]),
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),

        // Lets the worker pool borrow a non-escaping Swift closure across threads without a heap allocation.
        .target(name: "CTaskClosure"),
        // Process control that needs a C call (prctl is variadic): a rank dies with its launcher; atomics
        // and futexes on memory shared between ranks (the TCP transport's same-host links).
        .target(name: "CProcess"),
        .target(name: "CImageKernels", dependencies: ["CPNG"]),
        .target(name: "CTensorKernels"),
        // oneDNN's matmul for bf16 products on the CPU, loaded at run time (dlopen libdnnl.so.2).
        .target(name: "COneDNN", linkerSettings: [.linkedLibrary("dl")]),
        // The engine: tensors, the Backend protocol, layers, the RADAR model, loss, optimizer and
        // the training step. No C library: it runs on whatever backend it is given.
        .target(name: "RadarEngine"),
        // The CPU backend (OpenBLAS, FFTW, our worker pool) and the fenced backend that proves the
        // engine touches tensor memory only through the backend.
        .target(name: "RadarCPU", dependencies: ["RadarEngine", "COpenBLAS", "CFFTW", "CTaskClosure", "CTensorKernels", "COneDNN"]),
        // The CUDA backend's pieces that need no GPU: the run-time loader of the CUDA libraries
        // (dlopen: nothing links against CUDA), NVRTC, the kernel sources and their disk cache.
        .target(name: "RadarCUDA", dependencies: ["RadarEngine", "RadarCPU", "CCUDAEmulator"]),
        // The emulated device: the same kernel sources (kernels/*.cuh) compiled as host C++, each
        // block's threads run as fibers; a launcher per kernel (generated).
        // Built with -fsanitize=alignment: a GPU faults on a load or store not aligned to its size,
        // x86 does not; the checks call the emulator's own handler (no sanitizer runtime), which fails
        // the launch naming the source line (emulator.cpp). Optimised in debug builds too (the tests
        // run the debug build; -O0 made the emulated kernels about 3x slower), without type-based
        // alias analysis: kernels read bf16 pairs as 32-bit words, as CUDA code does.
        .target(name: "CCUDAEmulator", exclude: ["kernels", "selftest"], cxxSettings: [.unsafeFlags(["-fsanitize=alignment", "-O2", "-fno-strict-aliasing"])]),
        // Tests only (product RadarFakeCUDA): the driver API, cuBLAS and cuFFT functions DriverAPI
        // loads, over the emulator, with the real libraries' argument checks and error codes
        // (optimised like the emulator).
        .target(name: "CFakeCUDA", dependencies: ["CCUDAEmulator", "COpenBLAS", "CFFTW"], path: "Tests/FakeCUDA", cxxSettings: [.unsafeFlags(["-O2", "-fno-strict-aliasing"])]),
        // Everything around the engine in one process: data, checkpoints, metrics, the training
        // run, device selection. Re-exports RadarEngine and RadarCPU.
        .target(name: "RadarCore", dependencies: ["RadarEngine", "RadarCPU", "RadarCUDA", "CLZ4", "CPNG", "CLibDeflate", "CTurboJPEG", "CWebP", "CArchive", "CProcess", "CImageKernels", "COpenSSL"]),
        .target(name: "RadarDistributed", dependencies: ["RadarCore", "CMPI", "CProcess"]),

        // The command-line pieces radar and radar-worker share (training flags, progress).
        .target(name: "RadarCLI", dependencies: ["RadarCore", "RadarDistributed", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "radar", dependencies: [
            "RadarCore", "RadarDistributed", "RadarCLI", "CAllocationCounter",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "radar-worker", dependencies: [
            "RadarCore", "RadarDistributed", "RadarCLI",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "radar-coordinator", dependencies: [
            "RadarCore", "RadarDistributed",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // Counts heap allocations by interposing malloc (tests and `radar bench step`), to show the
        // training step allocates nothing. Counting is off except between start and stop.
        .target(name: "CAllocationCounter"),
        .testTarget(name: "RadarCoreTests",
                    dependencies: ["RadarCore", "RadarCUDA", "CAllocationCounter"],
                    exclude: ["Fixtures"]),
        // Launches real `mpirun -n N radar-worker` processes.
        .testTarget(name: "RadarDistributedTests", dependencies: ["RadarDistributed", "RadarCore", "radar-worker", "radar"]),
    ],
    swiftLanguageModes: [.v5],
    cxxLanguageStandard: .cxx17
)
