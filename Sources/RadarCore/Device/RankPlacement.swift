import Foundation

/// Which GPU a data-parallel rank uses: the GPU of its local rank on its host, as OpenMPI
/// (`OMPI_COMM_WORLD_LOCAL_RANK`/`_LOCAL_SIZE`), torchrun (`LOCAL_RANK`/`LOCAL_WORLD_SIZE`) and
/// SLURM (`SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`) name it. The driver honours
/// `CUDA_VISIBLE_DEVICES`, so ordinals count visible GPUs.
public enum RankPlacement {
    public static func localRank(_ env: [String: String] = ProcessInfo.processInfo.environment) -> Int? {
        for k in ["OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK", "SLURM_LOCALID"] { if let v = env[k].flatMap({ Int($0) }) { return v } }
        return nil
    }

    public static func localSize(_ env: [String: String] = ProcessInfo.processInfo.environment) -> Int? {
        for k in ["OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"] { if let v = env[k].flatMap({ Int($0) }) { return v } }
        return nil
    }

    public struct TooFewGPUs: Error, CustomStringConvertible {
        public let localRanks: Int, gpus: Int, visible: String?
        public var description: String {
            "\(localRanks) ranks on this host but \(gpus) GPU\(gpus == 1 ? "" : "s") visible\(visible.map { " (CUDA_VISIBLE_DEVICES=\($0))" } ?? ""): one GPU per rank, or --allow-gpu-sharing"
        }
    }

    /// The device this rank opens. `cuda` becomes `cuda:<local rank>`; an explicit `cuda:N` or a
    /// local rank beyond the GPU count shares a GPU, refused unless `allowSharing` (then local
    /// rank modulo the GPU count). Other devices are returned unchanged.
    public static func device(_ name: String, localRank: Int, localSize: Int, allowSharing: Bool,
                              gpuCount: () throws -> Int) throws -> String {
        guard name == "cuda" || name.hasPrefix("cuda:"), localSize > 1 else { return name }
        let gpus = try gpuCount()
        let visible = ProcessInfo.processInfo.environment["CUDA_VISIBLE_DEVICES"]
        if name != "cuda" {  // every local rank on the one named GPU
            if !allowSharing { throw TooFewGPUs(localRanks: localSize, gpus: 1, visible: visible) }
            return name
        }
        if localSize > gpus && !allowSharing { throw TooFewGPUs(localRanks: localSize, gpus: gpus, visible: visible) }
        return "cuda:\(localRank % max(gpus, 1))"
    }
}
