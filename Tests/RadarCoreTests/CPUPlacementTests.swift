import Foundation
import XCTest
@testable import RadarCore

/// `CPUPlacement`: sysfs CPU lists, the decision, and the process's threads really moved (then
/// put back), against a sysfs tree of our own for the GPU's PCI address.
final class CPUPlacementTests: XCTestCase {
    func testCPUListsParseAndPrintAsSysfsWritesThem() {
        XCTAssertEqual(CPUPlacement.parseList("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11])
        XCTAssertEqual(CPUPlacement.listText([0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11")
        XCTAssertEqual(CPUPlacement.listText([5]), "5")
        XCTAssertEqual(CPUPlacement.parseList("0-23,48-71").map { CPUPlacement.listText($0) }, "0-23,48-71")
        for bad in ["", "3-1", "a", "1-", "-2", "1-2-3", "0,,x"] { XCTAssertNil(CPUPlacement.parseList(bad), bad) }
    }

    func testTheDecisionKeepsNarrowsOrSaysTheLauncherBoundItElsewhere() {
        XCTAssertEqual(CPUPlacement.decide(allowed: Set(0..<8), local: Set(0..<4)), .narrow(Set(0..<4)))
        XCTAssertEqual(CPUPlacement.decide(allowed: Set(0..<4), local: Set(0..<8)), .keep)
        XCTAssertEqual(CPUPlacement.decide(allowed: Set(0..<8), local: Set(0..<8)), .keep)
        XCTAssertEqual(CPUPlacement.decide(allowed: Set(4..<8), local: Set(0..<4)), .elsewhere)
    }

    /// A sysfs tree where the PCI device at `bus` lists `cpus` as local; its root.
    func sysfs(_ bus: String, _ cpus: String) throws -> String {
        let root = NSTemporaryDirectory() + "radar-sysfs-\(UUID().uuidString.prefix(6))"
        let dir = "\(root)/bus/pci/devices/\(bus)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try (cpus + "\n").write(toFile: dir + "/local_cpulist", atomically: true, encoding: .utf8)
        return root
    }

    func testEveryThreadMovesToTheGPUsCPUsAndALauncherBindingIsLeftAlone() throws {
        let original = try XCTUnwrap(CPUPlacement.allowed(), "sched_getaffinity")
        XCTAssertGreaterThanOrEqual(original.count, 2, "a machine of 2 CPUs or more (CI has 2)")
        guard original.count >= 2 else { return }
        defer { CPUPlacement.restrictProcess(to: original) }
        let (first, second) = (original.min()!, original.sorted()[1])
        // cuDeviceGetPCIBusId spells the address in upper case, sysfs in lower.
        let root = try sysfs("0000:3b:00.0", "\(first)")
        XCTAssertEqual(CPUPlacement.localCPUs(busId: "0000:3B:00.0", sysfs: root), [first])
        XCTAssertNil(CPUPlacement.localCPUs(busId: "0000:3C:00.0", sysfs: root), "a device sysfs does not know")
        // A thread started before the placement moves too.
        let release = DispatchSemaphore(value: 0), started = DispatchSemaphore(value: 0)
        Thread.detachNewThread { started.signal(); release.wait() }
        started.wait()
        defer { release.signal() }
        let line = CPUPlacement.placeNear(busId: "0000:3B:00.0", gpu: "cuda:0", sysfs: root)
        XCTAssertEqual(line, "CPUs \(first) of \(CPUPlacement.listText(original)): those next to cuda:0 (PCI 0000:3b:00.0)")
        XCTAssertEqual(CPUPlacement.allowed(), [first])
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
        XCTAssertGreaterThan(tasks.count, 1)
        for t in tasks {
            let status = (try? String(contentsOfFile: "/proc/self/task/\(t)/status", encoding: .utf8)) ?? ""
            guard let allowedLine = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { continue }
            XCTAssertEqual(allowedLine.split(separator: "\t").last.map(String.init), "\(first)", "thread \(t)")
        }
        XCTAssertNil(CPUPlacement.placeNear(busId: "0000:3B:00.0", gpu: "cuda:0", sysfs: root), "already there: nothing to do")
        // Bound elsewhere (as mpirun --bind-to socket may): said, and left as it is.
        CPUPlacement.restrictProcess(to: [second])
        let warning = CPUPlacement.placeNear(busId: "0000:3b:00.0", gpu: "cuda:0", sysfs: root) ?? ""
        XCTAssertTrue(warning.hasPrefix("warning: bound by its launcher to CPUs \(second), none of them next to cuda:0 (CPUs \(first))"), warning)
        XCTAssertEqual(CPUPlacement.allowed(), [second])
    }
}
