// RadarCore is what commands and tests import; the engine and the CPU backend come with it.
@_exported import RadarCPU
@_exported import RadarCUDA
@_exported import RadarEngine
