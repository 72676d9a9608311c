import Foundation

extension RADARModel {
    /// MODEL.md §7, every draw from the counter-based generator keyed by (seed, parameter name):
    /// the result does not depend on registration order or thread count. The values are drawn on
    /// the host and uploaded once.
    public func initialize(_ store: ParameterStore, seed: UInt64) {
        func stream(_ name: String) -> RandomStream { RandomStream(seed: seed, stream: RandomStream.id("init:" + name)) }
        var host = [Float](repeating: 0, count: layout.parameterCount)
        host.withUnsafeMutableBufferPointer { all in
        for slot in layout.parameters {
            let t = UnsafeMutableBufferPointer(rebasing: all[slot.offset..<(slot.offset + slot.count)])
            let name = slot.name
            let s = stream(name)
            if name == "_gating_logit" {
                let g = config.gatingInit
                t.update(repeating: Float(Foundation.log(g / (1 - g))))
            } else if name.hasPrefix("encoder.") {
                initializeEncoder(name, t, s)
            } else if name.hasPrefix("reasoning.gru.") {
                let a = 1 / Float(config.evidenceDim).squareRoot()
                s.fillUniform(t, low: -a, high: a)
            } else if name.hasSuffix(".bias") {
                t.update(repeating: 0)
            } else if slot.shape.rank == 4 {
                // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out).
                let fanOut = slot.shape[0] * slot.shape[2] * slot.shape[3]
                s.fillNormal(t, std: (2 / Float(fanOut)).squareRoot())
            } else if slot.shape.rank == 2 {
                let a = (6 / Float(slot.shape[0] + slot.shape[1])).squareRoot()  // xavier_uniform_
                s.fillUniform(t, low: -a, high: a)
            } else {
                t.update(repeating: 1)  // BatchNorm weight
            }
        }
        }
        store.uploadValues(host)
        var buffers = [Float](repeating: 0, count: layout.bufferCount)
        for slot in layout.bufferSlots where slot.name.hasSuffix("running_var") {
            for i in slot.offset..<(slot.offset + slot.count) { buffers[i] = 1 }
        }
        store.uploadBuffers(buffers)
        for i in 0..<layout.counterNames.count { store.counters[i] = 0 }
    }

    private func initializeEncoder(_ name: String, _ t: UnsafeMutableBufferPointer<Float>, _ s: RandomStream) {
        if name.hasSuffix("cls_token") {
            s.fillNormal(t, std: 1e-6)
        } else if name.hasSuffix("pos_embed") {
            fillTruncatedNormal(t, s, std: 0.02)
        } else if name.contains("patch_embed") {
            // PyTorch's default Conv2d init: kaiming_uniform_(a=sqrt(5)) for the weight, and
            // U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias; both bounds equal 1/sqrt(fan_in).
            let fanIn = 3 * config.patchSize * config.patchSize
            let a = 1 / Float(fanIn).squareRoot()
            s.fillUniform(t, low: -a, high: a)
        } else if name.contains("norm") {
            t.update(repeating: name.hasSuffix(".weight") ? 1 : 0)
        } else if name.hasSuffix(".bias") {
            t.update(repeating: 0)
        } else {
            fillTruncatedNormal(t, s, std: 0.02)
        }
    }

    /// trunc_normal_(std, a=-2, b=2) as timm calls it: the bounds are absolute, so at std 0.02 a
    /// redraw is practically never needed; we redraw from further indices of the same stream.
    private func fillTruncatedNormal(_ t: UnsafeMutableBufferPointer<Float>, _ s: RandomStream, std: Float) {
        var extra = UInt64(t.count)
        for i in 0..<t.count {
            var v = std * s.normal(UInt64(i))
            while abs(v) > 2 { v = std * s.normal(extra); extra += 1 }
            t[i] = v
        }
    }
}
