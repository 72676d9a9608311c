/// How a device backend moves gradient buckets to the host ring and back while backward goes on
/// (a GPU's gradients cannot be reduced in place: Debian's OpenMPI is not CUDA-aware). Buckets
/// are numbered slots, prepared once:
///
/// 1. `markFinal(slot, t, into: host)`, on the training thread when backward reports the bucket
///    final: a point in the compute stream's queue (an event), after the kernels that wrote it,
///    and after it, on a down stream, the bucket's copy into page-locked host memory: queued at
///    once, so it runs while the communication thread is still reducing earlier buckets.
/// 2. `awaitDown(slot)`, on the communication thread: returns once that copy has landed (the
///    compute stream never waits for it).
/// 3. the ring reduces the host copy; `stageUp(host, into: t, slot:)` queues the copy back on an
///    up stream (not behind the downloads) and returns at once.
/// 4. `computeWaitsForUploads(slots)`, on the training thread before the optimizer: the compute
///    stream waits (on the device, not the host) for those copies.
public protocol GradientStaging: AnyObject {
    /// Events and the copy stream for `slots` buckets (once, before the first step).
    func prepareStaging(slots: Int)
    /// Host memory the copy stream can reach directly (page-locked), `count` floats.
    func allocatePinned(_ count: Int) -> UnsafeMutablePointer<Float>
    func releasePinned(_ p: UnsafeMutablePointer<Float>)
    func markFinal(_ slot: Int, _ t: Tensor, into host: UnsafeMutablePointer<Float>)
    func awaitDown(_ slot: Int)
    func stageUp(_ host: UnsafePointer<Float>, into t: Tensor, slot: Int)
    func computeWaitsForUploads(_ slots: Range<Int>)
}
