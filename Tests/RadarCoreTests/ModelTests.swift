import CAllocationCounter
import Foundation
import RadarCore
import RadarCPU
import XCTest

/// Builds a tiny RADAR, its trainer and a synthetic batch.
func makeTinyTrainer(threads: Int = 1, batch: Int = 4, accumulationSteps: Int = 1, backend: (any Backend)? = nil,
                     mutate: (inout RADARConfig) -> Void = { _ in }) throws
    -> (Trainer, DeviceTensor, DeviceTensor)
{
    var config = RADARConfig.preset("tiny")!
    mutate(&config)
    let model = try RADARModel(config: config)
    let ctx = ExecutionContext(backend: backend ?? testBackend(threads: threads), layout: model.layout, seed: 3)
    model.initialize(ctx.params, seed: 11)
    let trainer = Trainer(model: model, ctx: ctx, lr: 1e-3, accumulationSteps: accumulationSteps)
    let synth = SyntheticFaces(size: config.imgSize, seed: 5, difficulty: 0.2)
    let host = HostTensor(Shape(batch, 3, config.imgSize, config.imgSize))
    for i in 0..<batch { synth.normalized(i, mean: config.mean, std: config.std, into: host.pointer + i * 3 * config.imgSize * config.imgSize) }
    let images = DeviceTensor(ctx.backend, host)
    let labels = DeviceTensor(ctx.backend, Shape(batch), (0..<batch).map { Float(synth.label($0)) })
    return (trainer, images, labels)
}

final class ModelTests: XCTestCase {
    func testTinyModelOutputsHaveTheDocumentedShapesAndNames() throws {
        let (trainer, images, _) = try makeTinyTrainer()
        let m = trainer.model
        let c = m.config
        let out = try m.forward(images.tensor, trainer.ctx)
        XCTAssertEqual(out.logit.shape, Shape(4, 1))
        XCTAssertEqual(out.badmEvidence.shape, Shape(4, c.evidenceDim))
        XCTAssertEqual(out.iterationLogits.shape, Shape(4, c.reasoningIterations))
        XCTAssertEqual(out.attentionHistory.shape, Shape(4, c.reasoningIterations, 2))
        XCTAssertEqual(out.gatingAlpha.toArray(), [Float](repeating: 0.5, count: 4), "gating_init 0.5 gives alpha 0.5")
        for p in out.prob.toArray() { XCTAssertTrue(p > 0 && p < 1) }
        // Mean attention over two evidence tokens sums to 1 per iteration (no dropout in eval).
        let names = Set(m.layout.parameters.map(\.name))
        for n in ["_gating_logit", "encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed.proj.weight",
                  "encoder.blocks.1.attn.qkv.weight", "encoder.blocks.0.mlp.fc2.bias", "encoder.norm.weight",
                  "badm.edge_encoder.0.weight", "badm.edge_encoder.7.bias", "badm.patch_processor.3.weight",
                  "badm.fusion.0.weight", "badm.classifier.weight", "aadm.freq_encoder.3.weight", "aadm.cls_processor.0.weight",
                  "reasoning.init_proj_dual.0.weight", "reasoning.init_proj_single.0.bias", "reasoning.attention.q_proj.weight",
                  "reasoning.attention.out_proj.bias", "reasoning.gru.weight_ih", "reasoning.gru.bias_hh",
                  "reasoning.predictor.weight", "external_classifier_dual.3.weight", "external_classifier_single.0.weight"] {
            XCTAssertTrue(names.contains(n), "missing parameter \(n)")
        }
        XCTAssertNotNil(m.layout.buffer(named: "aadm.freq_encoder.4.running_var"))
        XCTAssertTrue(m.layout.counterNames.contains("badm.edge_encoder.1.num_batches_tracked"))
        XCTAssertEqual(m.layout.parameter(named: "encoder.pos_embed")!.shape, Shape(1, c.patchCount + 1, c.embedDim))
    }

    /// A Trainer that only runs forwards (predict, evaluate, serve, export) holds neither the
    /// gradients nor AdamW's moments (three times the weights' memory); the first step allocates
    /// them, zeroed, and trains as a Trainer that held them from the start.
    func testForwardOnlyHoldsNoGradientsOrMoments() throws {
        let (trainer, images, labels) = try makeTinyTrainer(batch: 4)
        _ = try trainer.evalForward(images: images.tensor)
        XCTAssertFalse(trainer.ctx.params.holdsGradients)
        XCTAssertFalse(trainer.optimizer.holdsMoments)
        let r = try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor))
        XCTAssertTrue(trainer.ctx.params.holdsGradients && trainer.optimizer.holdsMoments)
        // The same step from a Trainer whose buffers were touched before the step.
        let (other, images2, labels2) = try makeTinyTrainer(batch: 4)
        _ = other.ctx.params.downloadGrads()
        _ = other.optimizer.downloadMoments()
        let r2 = try XCTUnwrap(try other.step(images: images2.tensor, labels: labels2.tensor))
        XCTAssertEqual(r.terms.total, r2.terms.total)
        XCTAssertEqual(trainer.ctx.params.downloadValues(), other.ctx.params.downloadValues(), "the same update")
        let (m, v) = trainer.optimizer.downloadMoments()
        XCTAssertTrue(m.contains { $0 != 0 } && v.contains { $0 != 0 })
    }

    func testTinyModelLearnsASyntheticBatch() throws {
        let (trainer, images, labels) = try makeTinyTrainer(batch: 8)
        var first = 0.0, last = 0.0
        for i in 0..<40 {
            let r = try trainer.step(images: images.tensor, labels: labels.tensor)!
            XCTAssertTrue(r.terms.total.isFinite)
            if i == 0 { first = r.terms.total }
            last = r.terms.total
        }
        XCTAssertLessThan(last, first * 0.7, "loss went from \(first) to \(last)")
        XCTAssertEqual(trainer.skippedSteps, 0)
    }

    func testTrainingStepIsBitIdenticalAcrossThreadCounts() throws {
        func run(_ threads: Int) throws -> [Float] {
            let (trainer, images, labels) = try makeTinyTrainer(threads: threads)
            for _ in 0..<3 { _ = try trainer.step(images: images.tensor, labels: labels.tensor) }
            return trainer.ctx.params.downloadValues() + trainer.ctx.params.downloadBuffers()
        }
        let one = try run(1)
        assertBitIdentical(one, try run(2), "parameters after 3 steps, 1 vs 2 threads")
        assertBitIdentical(one, try run(3), "parameters after 3 steps, 1 vs 3 threads")
    }

    func testTrainingStepAllocatesNothingAfterWarmUp() throws {
        // Two threads, so the worker pool's dispatch is part of what is measured.
        let (trainer, images, labels) = try makeTinyTrainer(threads: 2, accumulationSteps: 2)
        for _ in 0..<3 { _ = try trainer.step(images: images.tensor, labels: labels.tensor) }
        trainer.ctx.arena.consolidate()
        _ = try trainer.step(images: images.tensor, labels: labels.tensor)
        let growth = trainer.ctx.arena.growthCount
        radar_allocation_counter_start()
        for _ in 0..<100 { _ = try trainer.step(images: images.tensor, labels: labels.tensor) }
        let allocations = radar_allocation_counter_stop()
        XCTAssertEqual(allocations, 0, "heap allocations during 100 training steps")
        XCTAssertEqual(trainer.ctx.arena.growthCount, growth, "the arena grew after warm-up")
        // The counter itself works: an array allocation is seen.
        radar_allocation_counter_start()
        let a = [Int](repeating: 1, count: 1000 + Int(labels.values[0]))
        XCTAssertGreaterThan(radar_allocation_counter_stop(), 0)
        XCTAssertEqual(a.count >= 1000, true)
    }

    /// What `radar bench step` relies on for the fake CUDA libraries' flag: allocations made while
    /// the flag is raised are not counted, those made while it is down are, and without a flag all are.
    func testTheAllocationCounterLeavesOutAllocationsWhileAFlagIsRaised() {
        let flag = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        defer { flag.deallocate(); radar_allocation_counter_ignore_while(nil) }
        let n = 1000 + Int(getpid() % 2)
        func allocations(flag raised: Int32?) -> UInt64 {
            if let raised { flag.pointee = raised; radar_allocation_counter_ignore_while(flag) } else { radar_allocation_counter_ignore_while(nil) }
            radar_allocation_counter_start()
            let a = [Int](repeating: 1, count: n)
            let count = radar_allocation_counter_stop()
            XCTAssertEqual(a.count, n)
            return count
        }
        XCTAssertEqual(allocations(flag: 1), 0)
        XCTAssertGreaterThan(allocations(flag: 0), 0)
        XCTAssertGreaterThan(allocations(flag: nil), 0)
    }

    /// Backward releases what it no longer needs (arena marks): the step's peak above the
    /// forward's saves is one encoder block's backward, whatever the depth; and a block's forward
    /// keeps what PyTorch's autograd keeps for it less GELU's output when backward recomputes (the
    /// GPU's choice), or that plus GELU's output and CDF and the probabilities when it does not
    /// (the CPU's).
    func testBackwardsTemporariesDoNotGrowWithDepth() throws {
        func arena(depth: Int, recompute: Bool) throws -> (forward: Int, extra: Int) {
            let (trainer, images, labels) = try makeTinyTrainer { $0.depth = depth; $0.imgSize = 64; $0.numHeads = 6 }
            let ctx = trainer.ctx
            ctx.recomputeInBackward = recompute
            _ = try trainer.step(images: images.tensor, labels: labels.tensor)
            ctx.beginPass()
            _ = try trainer.model.forward(images.tensor, ctx)
            let forward = ctx.arena.floatsInUse
            _ = try trainer.step(images: images.tensor, labels: labels.tensor)
            return (forward, ctx.arena.peakFloats - forward)
        }
        var c = RADARConfig.preset("tiny")!
        c.imgSize = 64
        c.numHeads = 6
        let tokens = c.patchCount + 1, d = c.embedDim
        let oneWide = 4 * tokens * d, probs = 4 * c.numHeads * tokens * tokens, cdf = 4 * tokens * c.mlpHidden
        for recompute in [true, false] {
            let two = try arena(depth: 2, recompute: recompute), six = try arena(depth: 6, recompute: recompute)
            XCTAssertGreaterThan(six.forward, two.forward, "four more blocks save more")
            XCTAssertLessThanOrEqual(six.extra, two.extra, "backward's peak above the forward: \(two.extra) floats at depth 2, \(six.extra) at 6")
            // One block's saves, batch 4, per token: eight D-wide tensors (LN1 out, q k v,
            // merged, h1 (over the proj output), LN2 out, h2 (over the fc2 output)) and fc1's
            // output (4D wide), plus LayerNorm's statistics; never the scores or separate
            // residual sums; GELU's output (4D wide), the probabilities and the CDF only when
            // not recomputed.
            let perBlock = (six.forward - two.forward) / 4
            let saves = 8 * oneWide + 4 * tokens * c.mlpHidden + (recompute ? 0 : probs + cdf + 4 * tokens * c.mlpHidden)
            XCTAssertGreaterThanOrEqual(perBlock, saves, "recompute \(recompute)")
            XCTAssertLessThan(perBlock, saves + oneWide, "recompute \(recompute): one block saves \(perBlock) floats: more than \(saves) and LayerNorm's statistics")
        }
    }

    /// Keeping the probabilities and GELU's output and CDF or recomputing them in backward gives the same
    /// bits: losses, gradient norms and parameters after three steps.
    func testRecomputingInBackwardGivesTheSameBits() throws {
        func train(recompute: Bool) throws -> ([Double], [Float]) {
            let (trainer, images, labels) = try makeTinyTrainer(threads: 2)
            trainer.ctx.recomputeInBackward = recompute
            var losses: [Double] = []
            for _ in 0..<3 {
                let r = try trainer.step(images: images.tensor, labels: labels.tensor)!
                losses += [r.terms.total, r.gradNorm]
            }
            return (losses, trainer.ctx.params.values.toArray())
        }
        let kept = try train(recompute: false), recomputed = try train(recompute: true)
        XCTAssertEqual(kept.0.map(\.bitPattern), recomputed.0.map(\.bitPattern), "losses and gradient norms")
        XCTAssertEqual(kept.1.map(\.bitPattern), recomputed.1.map(\.bitPattern), "parameters after three steps")
        let (fresh, _, _) = try makeTinyTrainer()
        XCTAssertNotEqual(kept.1, withExtendedLifetime(fresh) { fresh.ctx.params.values.toArray() }, "the steps changed the parameters")
    }

    /// The branches keep what their backward reads: a convolution its input and output (the
    /// im2col columns are scratch, rebuilt in backward), a ReLU nothing more (in place), the
    /// fixed image transforms only the map the CNN reads.
    func testConvolutionsAndBranchTransformsKeepNoScratch() throws {
        let layout = ParameterLayout()
        let conv = Conv2d("c", 1, 8, kernel: 5, stride: 2, padding: 2, layout: layout)
        let badm = BoundaryBranch("badm", config: RADARConfig.preset("tiny")!, layout: layout)
        let ctx = makeContext(layout)
        randomizeParameters(ctx.params, seed: 4)
        let x = randomHost(Shape(3, 1, 20, 20), seed: 5)
        ctx.beginPass()
        var before = ctx.arena.floatsInUse
        let (y, saved) = try conv.forward(x.tensor, ctx)
        XCTAssertEqual(ctx.arena.floatsInUse - before, 3 * 8 * 10 * 10, "a convolution's forward keeps its output only")
        before = ctx.arena.floatsInUse
        let r = ReLU.forward(y, ctx)
        XCTAssertEqual(r.base, y.base, "ReLU runs in place")
        XCTAssertEqual(ctx.arena.floatsInUse, before)
        // Backward rebuilds the columns: its weight gradient is the one from kept columns, that is
        // the sum over images and positions of dy x-patch, checked against a loop here.
        let dy = randomHost(y.shape, seed: 6)
        ctx.params.zeroGrads()
        _ = conv.backward(dy.tensor, saved, ctx)
        let dW = ctx.params.grad(conv.weight).toArray(), xs = x.values, dys = dy.values
        for (o, ky, kx) in [(0, 0, 0), (3, 2, 4), (7, 4, 1)] {
            var ref = 0.0
            for b in 0..<3 { for oy in 0..<10 { for ox in 0..<10 {
                let iy = oy * 2 - 2 + ky, ix = ox * 2 - 2 + kx
                guard iy >= 0 && iy < 20 && ix >= 0 && ix < 20 else { continue }
                ref += Double(dys[((b * 8 + o) * 10 + oy) * 10 + ox]) * Double(xs[(b * 20 + iy) * 20 + ix])
            } } }
            XCTAssertEqual(Double(dW[(o * 5 + ky) * 5 + kx]), ref, accuracy: 1e-4 * max(1, abs(ref)), "dW[\(o), 0, \(ky), \(kx)]")
        }
        // BADM's grey image is released: the edge map is its only full-resolution map kept, so
        // the branch keeps less than the grey and edge maps together would take.
        let c = RADARConfig.preset("tiny")!
        let images = randomHost(Shape(2, 3, c.imgSize, c.imgSize), seed: 7)
        let patches = randomHost(Shape(2, c.patchCount, c.embedDim), seed: 8)
        ctx.beginPass()
        let edgeInput = ctx.tensor(Shape(2, 1, c.imgSize, c.imgSize))
        let m = ctx.arena.floatsInUse
        _ = try badm.edgeEncoder.forward(edgeInput, ctx)
        let cnnKeeps = ctx.arena.floatsInUse - m
        ctx.beginPass()
        before = ctx.arena.floatsInUse
        _ = try badm.forward(images.tensor, patches: patches.tensor, ctx)
        let map = 2 * c.imgSize * c.imgSize
        XCTAssertLessThan(ctx.arena.floatsInUse - before - cnnKeeps, 2 * map,
                          "BADM keeps \(ctx.arena.floatsInUse - before) floats, its CNN \(cnnKeeps) of them")
        XCTAssertGreaterThanOrEqual(ctx.arena.floatsInUse - before - cnnKeeps, map, "the edge map is kept")
    }

    func testMicroBatchHasNoHostSynchronisationAndAnOptimizerStepHasOne() throws {
        let (trainer, images, labels) = try makeTinyTrainer(threads: 2, accumulationSteps: 3)
        let be = trainer.ctx.backend
        for _ in 0..<3 { _ = try trainer.step(images: images.tensor, labels: labels.tensor) }
        var perMicroBatch: [Int] = []
        var before = be.synchronizations
        for _ in 0..<3 {
            _ = try trainer.step(images: images.tensor, labels: labels.tensor)
            perMicroBatch.append(be.synchronizations - before)
            before = be.synchronizations
        }
        XCTAssertEqual(perMicroBatch, [0, 0, 1], "host synchronisations in the micro-batches of one optimizer step")
        // The counter counts: a download is one.
        _ = images.values
        XCTAssertEqual(be.synchronizations, before + 1)
    }

    func testEvalForwardReleasesEachEncoderBlockWithTheSameBits() throws {
        // radar predict / evaluate: no backward follows, so each block's tensors go once its
        // output is written. The same probabilities, bit for bit, from far less arena.
        // Also in CPU bf16 (its bf16 activations and weight copy): rounded products everywhere,
        // oneDNN's where this CPU runs it.
        var backends: [(String, (any Backend)?)] = [("the test device", nil), ("bf16 rounded", CPUBackend(threads: 1, products: .bf16Rounded))]
        if case .bf16OneDNN = try CPUProducts.bf16(environment: [:]).0 { backends.append(("bf16 oneDNN", CPUBackend(threads: 1, products: .bf16OneDNN))) }
        for (name, backend) in backends {
            func run(releasing: Bool) throws -> (probs: [Float], peak: Int) {
                let (trainer, images, _) = try makeTinyTrainer(batch: 4, backend: backend) { $0.depth = 6 }
                trainer.ctx.releaseBlocksInEval = releasing
                var probs = [Float](repeating: .nan, count: 4)
                try trainer.predict(images: images.tensor, into: &probs)
                try trainer.predict(images: images.tensor, into: &probs)  // a second pass reuses the arena
                return (probs, trainer.ctx.arena.peakFloats)
            }
            let kept = try run(releasing: false), released = try run(releasing: true)
            XCTAssertEqual(released.probs.map(\.bitPattern), kept.probs.map(\.bitPattern), name)
            XCTAssertFalse(released.probs.contains { $0.isNaN }, name)
            XCTAssertLessThan(Double(released.peak), 0.5 * Double(kept.peak), "\(name): arena peak \(released.peak) floats releasing, \(kept.peak) keeping")
        }
    }

    func testConfigJSONRoundTripAndValidation() throws {
        let tiny = RADARConfig.preset("tiny")!
        let back = try JSONDecoder().decode(RADARConfig.self, from: tiny.jsonData())
        XCTAssertEqual(back, tiny)
        let json = String(decoding: tiny.jsonData(), as: UTF8.self)
        for key in ["img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "evidence_dim",
                    "reasoning_iterations", "reasoning_heads", "fft_size", "dropout", "gating_init", "use_badm", "use_aadm", "mean", "std"] {
            XCTAssertTrue(json.contains("\"\(key)\""), "config JSON lacks \(key)")
        }
        let partial = try JSONDecoder().decode(RADARConfig.self, from: Data(#"{"img_size": 64, "patch_size": 8}"#.utf8))
        XCTAssertEqual(partial.embedDim, 384, "omitted fields get MODEL.md defaults")
        // A misspelt field is an error naming it (it was ignored, and depth 12 trained without a word).
        XCTAssertThrowsError(try RADARConfig.decode(Data(#"{"dept": 2, "embed_dim": 48, "colour": 1}"#.utf8), source: "c.json")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.hasPrefix("c.json: invalid RADAR config: unknown field colour; unknown field dept (did you mean depth?); the fields are img_size, "), s)
        }
        XCTAssertThrowsError(try RADARConfig.decode(Data(#"{"imgsize": 64, "":1}"#.utf8), source: "d.json")) { e in
            XCTAssertTrue("\(e)".hasPrefix("d.json: invalid RADAR config: unknown field ; unknown field imgsize (did you mean img_size?); "), "\(e)")
        }
        // Not JSON, not an object, a fraction for a whole number: each said with where or which
        // field (they were all "not a JSON config object").
        for (text, said) in [(#"{"depth": 2"#, "not valid JSON (Unexpected end of file during JSON parse.)"),
                             (#"{"dropout": NaN}"#, "not valid JSON (Invalid value around character 12.)"),
                             ("[1, 2]", #"not a JSON object of config fields ({"embed_dim": 384, ...})"#),
                             (#"{"depth": 2.5, "dropout": 0.25}"#, "field depth: 2.5 is not a whole number"),
                             (#"{"depth": "two"}"#, "field depth: Expected to decode Int but found a string instead.")] {
            XCTAssertThrowsError(try RADARConfig.decode(Data(text.utf8), source: "e.json")) { XCTAssertEqual("\($0)", "e.json: invalid RADAR config: " + said) }
        }
        // A run's config.json (training options, the model under "model") gives its model: passed
        // as --config, it was refused for its training fields.
        let run = try JSONSerialization.data(withJSONObject: ["batch_size": 16, "learning_rate": 5e-4,
                                                              "model": try JSONSerialization.jsonObject(with: tiny.jsonData())])
        XCTAssertEqual(try RADARConfig.decode(run, source: "outputs/a/config.json"), tiny)
        XCTAssertThrowsError(try RADARConfig.decode(Data(#"{"batch_size": 16, "model": {"dept": 2}}"#.utf8), source: "r.json")) { e in
            XCTAssertTrue("\(e)".hasPrefix("r.json (its \"model\"): invalid RADAR config: unknown field dept (did you mean depth?)"), "\(e)")
        }
        var bad = tiny
        bad.numHeads = 5
        bad.imgSize = 30
        let problems = bad.problems()
        XCTAssertTrue(problems.contains { $0.contains("embed_dim 48 must be divisible by num_heads 5") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("img_size 30 must be divisible by patch_size 8") }, "\(problems)")
        XCTAssertThrowsError(try RADARModel(config: bad))
    }

    func testSingleBranchAblationsRunAndZeroTheMissingBranch() throws {
        for useBadm in [true, false] {
            let (trainer, images, labels) = try makeTinyTrainer { $0.useBadm = useBadm; $0.useAadm = !useBadm }
            let r = try trainer.step(images: images.tensor, labels: labels.tensor)!
            XCTAssertTrue(r.terms.total.isFinite)
            XCTAssertEqual(r.terms.orth, 0)
            let out = try trainer.model.forward(images.tensor, trainer.ctx)
            let missing = useBadm ? out.aadmEvidence : out.badmEvidence
            XCTAssertTrue(missing.toArray().allSatisfy { $0 == 0 })
            let hist = out.attentionHistory.toArray()
            let missingColumn = useBadm ? 1 : 0
            for i in stride(from: missingColumn, to: hist.count, by: 2) { XCTAssertEqual(hist[i], 0) }
            // Unused parameters got no gradient and no update.
            let g = trainer.ctx.params.grad(named: useBadm ? "aadm.classifier.weight" : "badm.classifier.weight")!
            XCTAssertTrue(g.toArray().allSatisfy { $0 == 0 })
        }
    }
}

/// `radar predict --occlusion`: the map does not depend on how the covered copies are batched,
/// and each cell's drop is the probability of the image minus that of the covered copy.
final class OcclusionTests: XCTestCase {
    func testMapIsTheSameForAnyBatchAndEachDropIsTheCoveredCopysForward() throws {
        let (trainer, _, _) = try makeTinyTrainer(batch: 5)
        let c = trainer.model.config, per = 3 * c.imgSize * c.imgSize
        let face = SyntheticFaces(size: c.imgSize, seed: 7, difficulty: 0.2).rgbImage(1, label: 1)
        let host = HostTensor(Shape(16, 3, c.imgSize, c.imgSize)), input = DeviceTensor(trainer.ctx.backend, host.shape)
        func probabilities(_ images: [RGBImage]) throws -> [Float] {
            for (k, img) in images.enumerated() { Augmenter.normalize(img, mean: c.mean, std: c.std, into: host.pointer + k * per) }
            return try forward(images.count)
        }
        func forward(_ n: Int) throws -> [Float] {
            let view = input.tensor.slice(from: 0, Shape(n, 3, c.imgSize, c.imgSize))
            trainer.ctx.backend.upload(UnsafeBufferPointer(start: host.pointer, count: n * per), into: view)
            let probs = UnsafeMutablePointer<Float>.allocate(capacity: n)
            defer { probs.deallocate() }
            try trainer.predict(images: view, into: probs)
            return Array(UnsafeBufferPointer(start: probs, count: n))
        }
        let p = try probabilities([face])[0]
        let maps = try [16, 5, 1].map { try Occlusion.map(face, probability: p, config: c, batch: host.pointer, capacity: $0, forward: forward) }
        XCTAssertEqual(maps[0].grid, 4); XCTAssertEqual(maps[0].cell, 8); XCTAssertEqual(maps[0].drops.count, 16)
        for m in maps.dropFirst() {
            for (a, b) in zip(m.drops, maps[0].drops) { XCTAssertEqual(a, b, accuracy: 2e-6, "batches of 16, 5 (a part batch last) and 1") }
        }
        let fill = Occlusion.fill(c)
        XCTAssertEqual(fill, c.mean.map { UInt8(($0 * 255).rounded()) })
        let copies = (0..<16).map { Occlusion.covered(face, cell: 8, row: $0 / 4, col: $0 % 4, fill: fill) }
        XCTAssertEqual(copies[6].pixels[(9 * 32 + 17) * 3 + 1], fill[1], "row 1, column 2 covers (17, 9)")
        XCTAssertEqual(copies[6].pixels[(9 * 32 + 25) * 3 + 1], face.pixels[(9 * 32 + 25) * 3 + 1], "and not (25, 9)")
        let direct = try probabilities(copies)
        for k in 0..<16 { XCTAssertEqual(maps[0].drops[k], p - direct[k], accuracy: 2e-6, "cell \(k)") }
        XCTAssertTrue(maps[0].drops.contains { $0 != 0 }, "covering changes something")
    }
}

/// `Trainer.attentionRollout` (`radar predict --rollout`): the forward it wraps gives the same
/// probabilities as without it, an image's map is the same alone or in a batch, each map is the
/// class token's row of the product of (head-mean attention + I) / 2 over the blocks, computed
/// here as a matrix product from the probabilities the blocks hand out, and the sink is cleared.
final class AttentionRolloutTests: XCTestCase {
    func testRolloutIsTheBlocksProductAndLeavesTheForwardAlone() throws {
        let (trainer, images, _) = try makeTinyTrainer(batch: 3)
        let c = trainer.model.config, t = c.patchCount + 1, be = trainer.ctx.backend
        func probabilities(_ x: Tensor) throws -> [Float] {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: x.shape[0])
            defer { p.deallocate() }
            try trainer.predict(images: x, into: p)
            return Array(UnsafeBufferPointer(start: p, count: x.shape[0]))
        }
        let plain = try probabilities(images.tensor)
        let (withRollout, maps) = try trainer.attentionRollout { try probabilities(images.tensor) }
        XCTAssertEqual(withRollout, plain, "the same forward, bit for bit")
        XCTAssertNil(trainer.ctx.attentionProbabilitiesSink)
        XCTAssertEqual(maps.count, 3)
        // The reference: every block's probabilities, then the full matrix product in Double.
        var blocks: [[Float]] = []
        trainer.ctx.attentionProbabilitiesSink = { blocks.append(be.download($0)) }
        _ = try probabilities(images.tensor)
        trainer.ctx.attentionProbabilitiesSink = nil
        XCTAssertEqual(blocks.count, c.depth)
        let h = c.numHeads
        for i in 0..<3 {
            var r = (0..<(t * t)).map { $0 / t == $0 % t ? 1.0 : 0.0 }
            for p in blocks {
                var a = [Double](repeating: 0, count: t * t)
                for k in 0..<h { for j in 0..<(t * t) { a[j] += Double(p[(i * h + k) * t * t + j]) / Double(h) } }
                for j in 0..<t { a[j * t + j] += 1 }
                var next = [Double](repeating: 0, count: t * t)
                for row in 0..<t { for m in 0..<t { for col in 0..<t { next[row * t + col] += 0.5 * a[row * t + m] * r[m * t + col] } } }
                r = next
            }
            XCTAssertEqual(maps[i].count, c.patchCount)
            for j in 0..<c.patchCount { XCTAssertEqual(Double(maps[i][j]), r[j + 1], accuracy: 1e-6, "image \(i), patch \(j)") }
            XCTAssertTrue(maps[i].allSatisfy { $0 > 0 })
            XCTAssertLessThan(maps[i].reduce(0, +), 1)
        }
        // Image 1 alone: the same map.
        let one = images.tensor.slice(from: 3 * c.imgSize * c.imgSize, Shape(1, 3, c.imgSize, c.imgSize))
        let (_, alone) = try trainer.attentionRollout { try probabilities(one) }
        for (a, b) in zip(alone[0], maps[1]) { XCTAssertEqual(a, b, accuracy: 1e-6) }
    }
}
