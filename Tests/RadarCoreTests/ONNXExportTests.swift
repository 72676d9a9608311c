import Foundation
import RadarCore
import XCTest

/// `radar export-onnx`: the ONNX graph, run by ONNX Runtime (an implementation we did not write),
/// gives our eval-mode forward's outputs.
final class ONNXExportTests: XCTestCase {
    /// Runs the model in ONNX Runtime on the reference file's `image` and reports, per output, the
    /// largest difference from the reference tensors, plus the graph's interface and metadata.
    static let runtimeCheck = """
    import sys, json, numpy as np, onnxruntime as ort
    from safetensors.numpy import load_file
    ref = load_file(sys.argv[2])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    s = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    res = {"input": inp.name, "input_shape": [str(d) for d in inp.shape], "outputs": [o.name for o in s.get_outputs()],
           "diff": {}, "scale": {}, "shapes": {}}
    outs = s.run(None, {inp.name: ref["image"]})
    for o, v in zip(s.get_outputs(), outs):
        res["shapes"][o.name] = list(v.shape)
        if o.name in ref:
            res["diff"][o.name] = float(np.max(np.abs(v - ref[o.name])))
            res["scale"][o.name] = float(np.max(np.abs(ref[o.name])))
    named = dict(zip([o.name for o in s.get_outputs()], outs))
    meta = s.get_modelmeta().custom_metadata_map
    res["meta"] = meta
    if "calibrated_prob" in named:
        t = float(meta["temperature"])
        res["calibrated_diff"] = float(np.max(np.abs(named["calibrated_prob"] - 1 / (1 + np.exp(-named["logit"].astype(np.float64) / t)))))
    # One image alone (the batch dimension is symbolic) gives the same answer as in the batch.
    one = s.run(["logit"], {inp.name: ref["image"][1:2]})[0]
    res["batch_of_one_diff"] = float(np.max(np.abs(one - named["logit"][1:2])))
    print(json.dumps(res))
    """

    func testExportedGraphMatchesOurForwardInONNXRuntime() throws {
        let cases: [(String, (inout RADARConfig) -> Void)] = [
            ("dual", { _ in }), ("boundary only", { $0.useAadm = false }), ("frequency only", { $0.useBadm = false }),
        ]
        let dir = temporaryDirectory("onnx")
        for (label, mutate) in cases {
            let (trainer, images, _) = try makeTinyTrainer(batch: 3, mutate: mutate)
            let store = trainer.ctx.params, c = trainer.model.config
            // BatchNorm's running statistics away from 0 / 1, so eval mode's use of them is checked.
            var rng = SystemRandomNumberGenerator()
            var buffers = store.downloadBuffers()
            for s in store.layout.bufferSlots {
                for j in s.offset..<(s.offset + s.count) {
                    buffers[j] = s.name.hasSuffix("running_var") ? Float.random(in: 0.3...2.5, using: &rng) : Float.random(in: -0.5...0.5, using: &rng)
                }
            }
            store.uploadBuffers(buffers)
            let out = try trainer.evalForward(images: images.tensor)
            var reference: [String: SafeTensor] = ["image": SafeTensor(shape: images.shape.dims, floats: images.values)]
            for (name, t) in out.named { reference[name] = SafeTensor(shape: t.shape.dims, floats: trainer.ctx.backend.download(t)) }
            let refPath = dir + "/\(label.replacingOccurrences(of: " ", with: "_")).safetensors"
            try SafeTensors.encode(reference).write(to: URL(fileURLWithPath: refPath))
            let onnxPath = dir + "/\(label.replacingOccurrences(of: " ", with: "_")).onnx"
            try ONNXExport.write(store, config: c, temperature: 0.7, source: "test", to: onnxPath)

            let (rc, text) = try shell([interopPython, "-c", Self.runtimeCheck, onnxPath, refPath])
            XCTAssertEqual(rc, 0, "\(label): onnxruntime (RADAR_PYTHON=\(interopPython)): \(text)")
            guard rc == 0, let line = text.split(separator: "\n").last,
                  let res = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            XCTAssertEqual(res["input"] as? String, "image")
            XCTAssertEqual(res["input_shape"] as? [String], ["batch", "3", "\(c.imgSize)", "\(c.imgSize)"], label)
            XCTAssertEqual(res["outputs"] as? [String], ONNXExport.outputs(c, temperature: 0.7).map(\.name), label)
            let diff = res["diff"] as? [String: Double] ?? [:], scale = res["scale"] as? [String: Double] ?? [:]
            let shapes = res["shapes"] as? [String: [Int]] ?? [:]
            // Every output we compute, within float32 round-off of another implementation.
            for (name, t) in out.named {
                guard let d = diff[name] else { XCTFail("\(label): no output \(name) in \(res)"); continue }
                XCTAssertLessThanOrEqual(d, 2e-5 * max(1, scale[name] ?? 0), "\(label): \(name) differs from our forward by \(d)")
                XCTAssertEqual(shapes[name], t.shape.dims, "\(label): \(name)")
            }
            XCTAssertGreaterThan(scale["logit"] ?? 0, 0, "a model that says nothing checks nothing")
            XCTAssertLessThan(res["calibrated_diff"] as? Double ?? 1, 1e-6, "\(label): calibrated_prob is sigmoid(logit / T)")
            XCTAssertLessThan(res["batch_of_one_diff"] as? Double ?? 1, 1e-5, label)
            let meta = res["meta"] as? [String: String] ?? [:]
            XCTAssertEqual(meta["temperature"], "0.7")
            XCTAssertEqual(meta["normalization_mean"], c.mean.map { "\($0)" }.joined(separator: ","))
            let config = try RADARConfig.decode(Data((meta["radar_config"] ?? "").utf8), source: "metadata")
            XCTAssertEqual(config, c, "the config travels in the metadata")
        }
    }

    /// Weights that do not fit the config, or a temperature that is not one: a one-line error
    /// naming the file and what is wrong, before anything is built.
    func testWeightsThatDoNotFitAndBadTemperaturesAreRefusedByName() throws {
        let (trainer, _, _) = try makeTinyTrainer()
        var tensors = StateDict.export(trainer.ctx.params)
        let c = trainer.model.config
        XCTAssertNoThrow(try ONNXExport.encode(tensors, config: c, temperature: nil, source: "w.safetensors"))
        for t in [0.0, -1, .nan, .infinity] {
            XCTAssertThrowsError(try ONNXExport.encode(tensors, config: c, temperature: t, source: "w.safetensors")) { e in
                XCTAssertTrue("\(e)".hasPrefix("w.safetensors: temperature") && "\(e)".contains("positive finite"), "\(e)")
            }
        }
        tensors.removeValue(forKey: "reasoning.gru.weight_hh")
        XCTAssertThrowsError(try ONNXExport.encode(tensors, config: c, temperature: nil, source: "w.safetensors")) { e in
            XCTAssertTrue("\(e)".hasPrefix("w.safetensors") && "\(e)".contains("reasoning.gru.weight_hh") && !"\(e)".contains("\n"), "\(e)")
        }
    }
}
