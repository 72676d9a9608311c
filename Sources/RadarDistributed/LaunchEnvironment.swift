import Foundation

/// Where a TCP rank learns its rank, the world size and the coordinator's address, from the
/// launcher that started it (flags win over the environment):
/// - torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RUN_ID. torchrun's own
///   store holds MASTER_PORT, so the coordinator listens on MASTER_PORT + 1.
/// - srun: SLURM_PROCID, SLURM_NTASKS; the coordinator on the node srun was started from
///   (SLURM_LAUNCH_NODE_IPADDR, where rank 0 runs in a batch job) unless MASTER_ADDR is set, on
///   MASTER_PORT or 20000 + SLURM_JOB_ID mod 20000.
/// - `radar launch` and plain environments: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
/// RADAR_COORDINATOR_PORT overrides the port in every case.
/// The most ranks a job may have: far above any data-parallel job, so a mistyped WORLD_SIZE
/// (100000000) is an error rather than a coordinator waiting on, and scanning, a hundred million
/// ranks.
public let maximumWorldSize = 1 << 16

public struct LaunchEnvironment: Equatable, Sendable {
    public var rank: Int
    public var worldSize: Int
    public var host: String
    public var port: Int
    /// "torchrun", "srun" or "env".
    public var launcher: String

    public init(rank: Int, worldSize: Int, host: String, port: Int, launcher: String) {
        (self.rank, self.worldSize, self.host, self.port, self.launcher) = (rank, worldSize, host, port, launcher)
    }

    public struct Problem: Error, CustomStringConvertible {
        public let description: String
    }

    public static func resolve(rank: Int?, worldSize: Int?, coordinator: String?, env: [String: String]) throws -> LaunchEnvironment {
        let torchrun = env["TORCHELASTIC_RUN_ID"] != nil
        let slurm = env["SLURM_PROCID"] != nil && env["RANK"] == nil
        let launcher = torchrun ? "torchrun" : slurm ? "srun" : "env"
        // Each from its flag, else the first variable set; what was found goes into the error.
        func lookup(_ flag: Int?, _ name: String, _ keys: [String]) -> (value: Int?, said: String) {
            if let flag { return (flag, "--\(name) \(flag)") }
            guard let key = keys.first(where: { env[$0] != nil }), let text = env[key] else { return (nil, "no --\(name), \(keys.joined(separator: " or "))") }
            guard let v = Int(text.trimmingCharacters(in: .whitespaces)) else { return (nil, "\(key)=\(text) (not a whole number)") }
            return (v, "\(key)=\(v)")
        }
        let (rv, rsaid) = lookup(rank, "rank", ["RANK", "SLURM_PROCID"]), (nv, nsaid) = lookup(worldSize, "world-size", ["WORLD_SIZE", "SLURM_NTASKS"])
        guard let r = rv, let n = nv, n >= 1, r >= 0, r < n else {
            throw Problem(description: "--transport tcp needs --rank and --world-size (or RANK and WORLD_SIZE, or srun's SLURM_PROCID and SLURM_NTASKS), with 0 <= rank < world size; got \(rsaid) and \(nsaid)")
        }
        guard n <= maximumWorldSize else { throw Problem(description: "a world size of at most \(maximumWorldSize) ranks is expected, got \(nsaid)") }
        if let c = coordinator {
            guard let (h, p) = hostPort(c) else { throw Problem(description: "--coordinator \(hostPortExpectation(c))") }
            return LaunchEnvironment(rank: r, worldSize: n, host: h, port: p, launcher: launcher)
        }
        guard let host = env["MASTER_ADDR"] ?? (slurm ? env["SLURM_LAUNCH_NODE_IPADDR"] : nil) else {
            throw Problem(description: "--coordinator HOST:PORT or MASTER_ADDR (and MASTER_PORT) are needed with --transport tcp")
        }
        guard !host.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw Problem(description: "\(env["MASTER_ADDR"] != nil ? "MASTER_ADDR" : "SLURM_LAUNCH_NODE_IPADDR") is empty: expected the coordinator's host name or address")
        }
        for key in ["RADAR_COORDINATOR_PORT", "MASTER_PORT"] {
            if let text = env[key], Int(text) == nil { throw Problem(description: "\(key)=\(text): expected a port number") }
        }
        var port: Int?
        if let p = env["RADAR_COORDINATOR_PORT"].flatMap({ Int($0) }) {
            port = p
        } else if let p = env["MASTER_PORT"].flatMap({ Int($0) }) {
            port = torchrun ? p + 1 : p
        } else if slurm, let job = env["SLURM_JOB_ID"].flatMap({ Int($0) }) {
            port = 20000 + job % 20000
        }
        guard let p = port else {
            throw Problem(description: "MASTER_PORT (or RADAR_COORDINATOR_PORT) is needed with MASTER_ADDR")
        }
        guard (1...65535).contains(p) else {
            throw Problem(description: "the coordinator's port \(p) (from \(env["RADAR_COORDINATOR_PORT"] != nil ? "RADAR_COORDINATOR_PORT" : env["MASTER_PORT"] != nil ? "MASTER_PORT" + (torchrun ? " + 1" : "") : "SLURM_JOB_ID")) is not in 1...65535")
        }
        return LaunchEnvironment(rank: r, worldSize: n, host: host, port: p, launcher: launcher)
    }
}

/// `HOST:PORT` split at its last colon, with a host and a port in 1...65535 (0 too where
/// `allowAnyPort`: a listener on any free port); an IPv6 host in brackets (`[fd00::1]:29500`,
/// returned without them); nil otherwise (an IPv6 address without brackets is ambiguous).
public func hostPort(_ address: String, allowAnyPort: Bool = false) -> (host: String, port: Int)? {
    guard let i = address.lastIndex(of: ":"), i != address.startIndex,
          let port = Int(address[address.index(after: i)...]), (allowAnyPort ? 0 : 1)...65535 ~= port else { return nil }
    let host = String(address[..<i])
    if host.hasPrefix("[") || host.hasSuffix("]") {
        guard host.hasPrefix("["), host.hasSuffix("]"), host.count > 2 else { return nil }
        return (String(host.dropFirst().dropLast()), port)
    }
    return host.contains(":") ? nil : (host, port)
}

/// The message for an address `hostPort` refused.
public func hostPortExpectation(_ address: String, allowAnyPort: Bool = false) -> String {
    "\(address): expected HOST:PORT with a port in \(allowAnyPort ? 0 : 1)...65535 (an IPv6 address in brackets: [fd00::1]:29500)"
}
