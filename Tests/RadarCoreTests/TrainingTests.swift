import Foundation
import RadarCore
import XCTest

final class TrainingTests: XCTestCase {
    func testOneCycleMatchesPyTorchScheduleAndMomentum() throws {
        // Fixture from tools/golden/schedule_fixture.py (torch.optim.lr_scheduler.OneCycleLR).
        let data = try Data(contentsOf: fixturesDirectory.appendingPathComponent("onecycle.json"))
        let cases = (try JSONSerialization.jsonObject(with: data) as! [String: Any])["cases"] as! [[String: Any]]
        XCTAssertEqual(cases.count, 3)
        for c in cases {
            let s = OneCycleLR(maxLR: c["max_lr"] as! Double, totalSteps: c["total_steps"] as! Int)
            let lrs = c["lr"] as! [Double], betas = c["beta1"] as! [Double]
            for k in 0..<lrs.count {
                let v = s.values(at: k)
                XCTAssertEqual(v.lr, lrs[k], accuracy: 1e-12 + 1e-9 * lrs[k], "lr at step \(k) of \(c["total_steps"]!)")
                XCTAssertEqual(v.beta1, betas[k], accuracy: 1e-12, "beta1 at step \(k)")
            }
        }
    }

    func testOneCycleWithAOneStepWarmUpStaysFinite() throws {
        // pct_start 0.1 x 10 steps puts warm-up's end at step 0 (PyTorch: ZeroDivisionError). It
        // gave step 0 a NaN learning rate, AdamW turned every parameter into NaN, and `radar train`
        // on 344 images at batch 16 x 2 then hung computing NaN metrics. Step 0 is warm-up's start.
        let s = OneCycleLR(maxLR: 1e-3, totalSteps: 10)
        XCTAssertEqual(s.values(at: 0).lr, 1e-3 / 25, accuracy: 1e-15)
        XCTAssertEqual(s.values(at: 0).beta1, 0.95, accuracy: 1e-15)
        XCTAssertEqual(s.values(at: 9).lr, 1e-3 / 25 / 1e4, accuracy: 1e-18, "the last step is at the final learning rate")
        for total in 1...64 {
            let s = OneCycleLR(maxLR: 1e-3, totalSteps: total)
            for k in 0..<total {
                let v = s.values(at: k)
                XCTAssertTrue(v.lr.isFinite && v.lr > 0 && v.lr <= 1e-3 * (1 + 1e-12), "lr \(v.lr) at step \(k) of \(total)")
                XCTAssertTrue(v.beta1 >= 0.85 - 1e-12 && v.beta1 <= 0.95 + 1e-12, "beta1 \(v.beta1) at step \(k) of \(total)")
            }
        }
        let (trainer, images, labels) = try makeTinyTrainer()
        trainer.schedule = s
        XCTAssertNotNil(try trainer.step(images: images.tensor, labels: labels.tensor))
        let values = trainer.ctx.params.downloadValues()
        XCTAssertFalse(values.contains { !$0.isFinite }, "parameters after the first step of a 10-step schedule")
    }

    /// An epoch whose rank spent over a fifth of its training time blocked on the loader says so
    /// on its log line, with the loader threads it had; otherwise nothing is added.
    func testAnInputBoundEpochSaysSo() {
        XCTAssertEqual(TrainingRun.inputBoundNote(["step_seconds": 0.1, "data_wait_seconds": 0.03], loaderThreads: 2),
                       "  (30% of it waiting for images: input-bound at --loader-threads 2)")
        XCTAssertEqual(TrainingRun.inputBoundNote(["step_seconds": 0.1, "data_wait_seconds": 0.05, "data_wait_rank": 3], loaderThreads: 1),
                       "  (50% of it waiting for images on rank 3: input-bound at --loader-threads 1)", "the rank that waited most")
        XCTAssertEqual(TrainingRun.inputBoundNote(["step_seconds": 0.1, "data_wait_seconds": 0.02], loaderThreads: 2), "")
        XCTAssertEqual(TrainingRun.inputBoundNote(["images_per_s": 10], loaderThreads: 1), "", "no optimizer step, no figures")
    }

    func testDeepSupervisionWeights() {
        assertClose(RADARLoss.deepWeights(3), [1.0 / 6, 1.0 / 3, 0.5], rtol: 1e-6, atol: 1e-7, "T = 3")
        XCTAssertEqual(RADARLoss.deepWeights(1), [1])
    }

    func testAccumulatingTwoHalfStepsEqualsOneStep() throws {
        // Same batch twice at scale 1/2 gives the single-batch gradient (dropout off, so the two
        // micro-batches are identical functions).
        func grads(accumulation: Int) throws -> [Float] {
            let (trainer, images, labels) = try makeTinyTrainer(accumulationSteps: accumulation) { $0.dropout = 0; $0.branchDropout = 0 }
            for _ in 0..<accumulation { try trainer.microBatch(images: images.tensor, labels: labels.tensor) }
            return trainer.ctx.params.downloadGrads()
        }
        assertClose(try grads(accumulation: 2), try grads(accumulation: 1), rtol: 1e-4, atol: 1e-7, "accumulated gradients (float32 sum of two halves)")
        let (trainer, images, labels) = try makeTinyTrainer(accumulationSteps: 2)
        let first = try trainer.step(images: images.tensor, labels: labels.tensor)
        XCTAssertNil(first, "the first of two micro-batches does not step")
        XCTAssertEqual(trainer.optimizer.step, 0)
        let second = try trainer.step(images: images.tensor, labels: labels.tensor)
        XCTAssertEqual(second?.microBatches, 2)
        XCTAssertEqual(trainer.optimizer.step, 1)
    }

    func testNonFiniteStepIsSkippedAndCounted() throws {
        let (trainer, images, labels) = try makeTinyTrainer()
        let before = trainer.ctx.params.downloadValues()
        images.tensor[5] = .nan
        let r = try trainer.step(images: images.tensor, labels: labels.tensor)!
        XCTAssertTrue(r.skipped)
        XCTAssertEqual(trainer.skippedSteps, 1)
        XCTAssertEqual(trainer.optimizer.step, 0, "no AdamW step was taken")
        XCTAssertEqual(trainer.ctx.params.downloadValues().map(\.bitPattern), before.map(\.bitPattern), "parameters untouched")
        // The next finite step is taken as step 1.
        images.tensor[5] = 0
        let next = try trainer.step(images: images.tensor, labels: labels.tensor)!
        XCTAssertFalse(next.skipped)
        XCTAssertEqual(trainer.optimizer.step, 1)
    }

    func testGradientClippingBoundsTheNorm() throws {
        let (trainer, images, labels) = try makeTinyTrainer()
        try trainer.microBatch(images: images.tensor, labels: labels.tensor)
        let flag = testTensor(Shape(1)), norm = testTensor(Shape(1)), gate = testTensor(Shape(1))
        trainer.optimizer.clipGradients(maxNorm: 0.1, nonFinite: flag.tensor, norm: norm.tensor, gate: gate.tensor)
        XCTAssertGreaterThan(norm.values[0], 0.1)
        XCTAssertEqual(gate.values[0], 1)
        trainer.optimizer.clipGradients(maxNorm: 1e9, nonFinite: flag.tensor, norm: norm.tensor, gate: gate.tensor)
        XCTAssertEqual(norm.values[0], 0.1, accuracy: 1e-4)
    }

    func testInitialisationFollowsModelSection7() throws {
        var config = RADARConfig.preset("tiny")!
        config.gatingInit = 0.25
        let model = try RADARModel(config: config)
        let store = ParameterStore(layout: model.layout, backend: sharedTestBackend)
        model.initialize(store, seed: 9)
        func values(_ n: String) -> [Float] { store.value(named: n)!.toArray() }
        func std(_ v: [Float]) -> Double {
            let m = v.reduce(0.0) { $0 + Double($1) } / Double(v.count)
            return (v.reduce(0.0) { $0 + (Double($1) - m) * (Double($1) - m) } / Double(v.count)).squareRoot()
        }
        XCTAssertEqual(Double(values("_gating_logit")[0]), log(0.25 / 0.75), accuracy: 1e-6)
        // xavier_uniform: |w| <= sqrt(6 / (fan_in + fan_out)), zero bias.
        let fusion = values("badm.fusion.0.weight"), bound = Float((6.0 / Double(2 * 16 + 128 + 24)).squareRoot())
        XCTAssertTrue(fusion.allSatisfy { abs($0) <= bound })
        XCTAssertEqual(std(fusion), Double(bound) / 3.0.squareRoot(), accuracy: Double(bound) * 0.05)
        XCTAssertTrue(values("badm.fusion.0.bias").allSatisfy { $0 == 0 })
        // kaiming_normal fan_out (relu): std sqrt(2 / (out k k)).
        XCTAssertEqual(std(values("badm.edge_encoder.3.weight")), (2.0 / (64 * 25)).squareRoot(), accuracy: 0.002)
        XCTAssertTrue(values("aadm.freq_encoder.4.weight").allSatisfy { $0 == 1 })
        XCTAssertTrue(store.buffer(named: "aadm.freq_encoder.4.running_var")!.toArray().allSatisfy { $0 == 1 })
        // GRUCell: U(-1/sqrt(E), 1/sqrt(E)).
        XCTAssertTrue(values("reasoning.gru.weight_hh").allSatisfy { abs($0) <= 0.25 })
        // ViT: trunc_normal(0.02) weights, cls_token ~ 1e-6, LayerNorm 1/0.
        XCTAssertEqual(std(values("encoder.blocks.0.attn.qkv.weight")), 0.02, accuracy: 0.002)
        XCTAssertLessThan(values("encoder.cls_token").map { abs($0) }.max()!, 1e-5)
        XCTAssertTrue(values("encoder.norm.weight").allSatisfy { $0 == 1 })
        // Deterministic by seed, different across seeds.
        let again = ParameterStore(layout: model.layout, backend: sharedTestBackend)
        model.initialize(again, seed: 9)
        XCTAssertEqual(again.downloadValues(), store.downloadValues())
        model.initialize(again, seed: 10)
        XCTAssertNotEqual(again.downloadValues(), store.downloadValues())
    }

    func testTimmCheckpointLoadsAndPosEmbedIsResampledAsTimmDoes() throws {
        let path = fixturesDirectory.appendingPathComponent("timm/vit_tiny_grid4.safetensors").path
        let timm = try SafeTensors.read(path).tensors
        let expected = try SafeTensors.read(fixturesDirectory.appendingPathComponent("timm/pos_embed_resampled.safetensors").path).tensors
        for (img, grid) in [(32, 4), (48, 6), (24, 3)] {
            var c = RADARConfig.preset("tiny")!
            (c.imgSize, c.patchSize, c.embedDim, c.depth, c.numHeads) = (img, 8, 16, 1, 2)
            let model = try RADARModel(config: c)
            let store = ParameterStore(layout: model.layout, backend: sharedTestBackend)
            let resampled = try TimmWeights.load(path, into: store, config: c)
            XCTAssertEqual(resampled, grid == 4 ? [] : ["pos_embed"])
            XCTAssertEqual(store.value(named: "encoder.blocks.0.attn.qkv.weight")!.toArray(), timm["blocks.0.attn.qkv.weight"]!.floats)
            let pos = store.value(named: "encoder.pos_embed")!.toArray()
            if grid == 4 {
                XCTAssertEqual(pos, timm["pos_embed"]!.floats)
            } else {
                assertClose(pos, expected["pos_embed_grid\(grid)"]!.floats, rtol: 1e-5, atol: 1e-6, "pos_embed resampled to \(grid)x\(grid)")
            }
        }
    }

    func testTimmLoaderListsMissingUnknownAndMismatchedTensors() throws {
        var c = RADARConfig.preset("tiny")!
        (c.embedDim, c.depth, c.numHeads) = (16, 2, 2)  // depth 2: blocks.1.* are missing from the file
        let model = try RADARModel(config: c)
        let path = fixturesDirectory.appendingPathComponent("timm/vit_tiny_grid4.safetensors").path
        XCTAssertThrowsError(try TimmWeights.load(path, into: ParameterStore(layout: model.layout, backend: sharedTestBackend), config: c)) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("missing") && text.contains("blocks.*.attn.qkv.weight"), text)
            XCTAssertLessThan(text.count, 800, "folded, not every key spelled out: \(text)")
        }
        c.depth = 1
        c.embedDim = 32
        let wide = try RADARModel(config: c)
        XCTAssertThrowsError(try TimmWeights.load(path, into: ParameterStore(layout: wide.layout, backend: sharedTestBackend), config: c)) { e in
            XCTAssertTrue("\(e)".contains("misshaped") && "\(e)".contains("cls_token"), "\(e)")
        }
    }
}

final class MetricsTests: XCTestCase {
    func testUndefinedAUCSaysWhy() {
        XCTAssertNil(BinaryMetrics.undefinedAUCReason(scores: [0.1, 0.9], labels: [0, 1]))
        XCTAssertEqual(BinaryMetrics.undefinedAUCReason(scores: [.nan, 0.9, .nan], labels: [0, 1, 1]),
                       "2 of 3 scores are NaN (the model's outputs are not finite)")
        XCTAssertEqual(BinaryMetrics.undefinedAUCReason(scores: [0.1, 0.9], labels: [1, 1]), "0 real and 2 fake images: AUC needs both")
        XCTAssertFalse(BinaryMetrics.all(scores: [0.1, 0.9], labels: [1, 1], sequences: ["a", "b"])["auc"]!.isFinite)
    }

    /// `radar evaluate`'s heads: each head's scores through the same metrics (scikit-learn's
    /// fixture values), a disabled branch null, the gate, the last iteration's attention averaged
    /// per class (null for a class without images).
    func testHeadMetricsReportEachHeadTheGateAndAttentionPerClass() throws {
        let data = try Data(contentsOf: fixturesDirectory.appendingPathComponent("metrics.json"))
        let c = ((try JSONSerialization.jsonObject(with: data) as! [String: Any])["cases"] as! [[String: Any]])[0]
        let scores = (c["scores"] as! [Double]).map(Float.init), labels = c["labels"] as! [Int], seqs = c["sequences"] as! [String]
        var heads = HeadMetrics(useBadm: true, useAadm: false)
        var sums = [[0.0, 0.0], [0.0, 0.0]], counts = [0, 0]
        for (i, s) in scores.enumerated() {
            let a: Float = 0.1 + 0.8 * Float(i % 7) / 6
            heads.append(Explanation(probability: s, logit: .nan, boundary: s, frequency: nil, reasoning: 1 - s, external: s, gate: 0.25,
                                     iterations: [0.5, 1 - s], attention: [[0.5, 0.5], [a, 1 - a]]))
            sums[labels[i]][0] += Double(a); sums[labels[i]][1] += Double(1 - a); counts[labels[i]] += 1
        }
        let r = heads.report(labels: labels, sequences: seqs)
        let h = r["heads"] as! [String: Any]
        XCTAssertTrue(h["frequency"] is NSNull, "a disabled branch has no metrics")
        let boundary = h["boundary"] as! [String: Double], reasoning = h["reasoning"] as! [String: Double], external = h["external"] as! [String: Double]
        for key in ["auc", "average_precision", "accuracy", "eer", "sequence_auc"] {
            XCTAssertEqual(boundary[key]!, c[key] as! Double, accuracy: 1e-9, key)
            XCTAssertEqual(external[key]!, c[key] as! Double, accuracy: 1e-9, key)
        }
        XCTAssertEqual(reasoning["auc"]!, 1 - (c["auc"] as! Double), accuracy: 1e-9, "scores reversed")
        XCTAssertEqual(r["gate"] as? Double, 0.25)
        let att = r["attention"] as! [String: Any]
        for (name, label) in [("real", 0), ("fake", 1)] {
            let m = att[name] as! [String: Double]
            XCTAssertEqual(m["boundary"]!, sums[label][0] / Double(counts[label]), accuracy: 1e-6, "\(name): the last iteration's")
            XCTAssertEqual(m["frequency"]!, sums[label][1] / Double(counts[label]), accuracy: 1e-6, name)
        }
        var oneClass = HeadMetrics(useBadm: true, useAadm: true)
        oneClass.append(Explanation(probability: 0.2, logit: -1.386, boundary: 0.3, frequency: 0.4, reasoning: 0.2, external: 0.2, gate: 0.5,
                                    iterations: [0.2], attention: [[0.6, 0.4]]))
        let o = oneClass.report(labels: [0], sequences: ["s"])
        XCTAssertTrue((o["attention"] as! [String: Any])["fake"] is NSNull, "no fake image: no mean")
        XCTAssertTrue(((o["heads"] as! [String: Any])["frequency"] as! [String: Double])["auc"]!.isNaN, "one class: AUC undefined")
    }

    /// `radar evaluate --bootstrap`: every replicate's AUC and accuracy, and the percentile
    /// intervals, as numpy computes them from the same drawn sequences (AUC as the share of
    /// (fake, real) pairs in order, ties halved); the same seed gives the same draws.
    func testSequenceBootstrapMatchesNumpyOnTheSameDraws() throws {
        let data = try Data(contentsOf: fixturesDirectory.appendingPathComponent("metrics.json"))
        let c = ((try JSONSerialization.jsonObject(with: data) as! [String: Any])["cases"] as! [[String: Any]])[1]
        let scores = (c["scores"] as! [Double]).map(Float.init), labels = c["labels"] as! [Int], seqs = c["sequences"] as! [String]
        let n = Set(seqs).count
        XCTAssertEqual(n, 30)
        let draws = SequenceBootstrap.draws(sequenceCount: n, replicates: 300, seed: 7)
        XCTAssertEqual(draws, SequenceBootstrap.draws(sequenceCount: n, replicates: 300, seed: 7))
        XCTAssertNotEqual(draws, SequenceBootstrap.draws(sequenceCount: n, replicates: 300, seed: 8))
        let ours = SequenceBootstrap.replicateMetrics(scores: scores, labels: labels, sequences: seqs, draws: draws)
        let result = try XCTUnwrap(SequenceBootstrap.run(scores: scores, labels: labels, sequences: seqs, replicates: 300, seed: 7))
        let input = temporaryDirectory("bootstrap") + "/in.json"
        try JSONSerialization.data(withJSONObject: ["scores": scores.map(Double.init), "labels": labels, "sequences": seqs, "draws": draws])
            .write(to: URL(fileURLWithPath: input))
        let script = """
        import json, sys
        import numpy as np
        d = json.load(open(sys.argv[1]))
        s, y = np.array(d['scores'], dtype=np.float32), np.array(d['labels'])
        names = sorted(set(d['sequences']))
        members = [[i for i, q in enumerate(d['sequences']) if q == n] for n in names]
        aucs, accs = [], []
        for draw in d['draws']:
            idx = [i for q in draw for i in members[q]]
            ss, yy = s[idx].astype(np.float64), y[idx]
            pos, neg = ss[yy == 1], ss[yy == 0]
            if len(pos) == 0 or len(neg) == 0:
                aucs.append(None); accs.append(None); continue
            aucs.append(float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))))
            accs.append(float(np.mean((s[idx] >= 0.5).astype(int) == yy)))
        ka = [a for a in aucs if a is not None]; kc = [a for a in accs if a is not None]
        print(json.dumps({'auc': aucs, 'ci_auc': [np.percentile(ka, 2.5), np.percentile(ka, 97.5)],
                          'ci_accuracy': [np.percentile(kc, 2.5), np.percentile(kc, 97.5)]}))
        """
        let (rc, out) = try shell([interopPython, "-c", script, input])
        XCTAssertEqual(rc, 0, out)
        let ref = try JSONSerialization.jsonObject(with: Data(out.split(separator: "\n").last!.utf8)) as! [String: Any]
        let aucs = ref["auc"] as! [Any]
        XCTAssertEqual(aucs.count, 300)
        for (i, a) in aucs.enumerated() {
            if let a = a as? Double { XCTAssertEqual(ours[i]?["auc"] ?? -1, a, accuracy: 1e-12, "replicate \(i)") } else { XCTAssertNil(ours[i], "replicate \(i)") }
        }
        for (k, key) in [("auc", "ci_auc"), ("accuracy", "ci_accuracy")] {
            let r = ref[key] as! [Double], mine = try XCTUnwrap(result.intervals[k])
            XCTAssertEqual(mine.low, r[0], accuracy: 1e-12, k); XCTAssertEqual(mine.high, r[1], accuracy: 1e-12, k)
            XCTAssertLessThan(mine.low, mine.high, k)
        }
        let point = try XCTUnwrap(BinaryMetrics.rocAUC(scores: scores, labels: labels))
        XCTAssertTrue(result.intervals["auc"]!.low <= point && point <= result.intervals["auc"]!.high)
        XCTAssertEqual(result.skipped, ours.filter { $0 == nil }.count)
        XCTAssertEqual(SequenceBootstrap.percentile([1, 2, 3, 4], 25), 1.75, "numpy's linear interpolation")
        XCTAssertNil(SequenceBootstrap.run(scores: [0.1, .nan], labels: [0, 1], sequences: ["a", "b"], replicates: 10, seed: 0))
    }

    func testMetricsMatchScikitLearn() throws {
        // Fixture: tools/golden/metrics_fixture.py (roc_auc_score, average_precision_score,
        // accuracy_score, roc_curve-based EER, AUC over per-sequence mean scores, brier_score_loss,
        // ECE over calibration_curve's bins).
        let data = try Data(contentsOf: fixturesDirectory.appendingPathComponent("metrics.json"))
        let cases = (try JSONSerialization.jsonObject(with: data) as! [String: Any])["cases"] as! [[String: Any]]
        XCTAssertEqual(cases.count, 4)
        for (i, c) in cases.enumerated() {
            let scores = (c["scores"] as! [Double]).map(Float.init), labels = c["labels"] as! [Int], seqs = c["sequences"] as! [String]
            let m = BinaryMetrics.all(scores: scores, labels: labels, sequences: seqs)
            for key in ["auc", "average_precision", "accuracy", "eer", "sequence_auc", "ece"] {
                XCTAssertEqual(m[key]!, c[key] as! Double, accuracy: 1e-9, "case \(i) \(key)")
            }
            // scikit-learn squares float32 differences in float32; ours are doubles.
            XCTAssertEqual(m["brier"]!, c["brier"] as! Double, accuracy: 1e-7, "case \(i) brier")
        }
        // Calibration on its own: a score on a bin's upper edge belongs to that bin (0.5 in the
        // fifth with 0.45; the bin holds one fake in two, mean score 0.475), and the rest.
        let ece = try XCTUnwrap(BinaryMetrics.expectedCalibrationError(scores: [0.45, 0.5, 0.95, 0.05], labels: [0, 1, 1, 0]))
        XCTAssertEqual(ece, 0.5 * 0.025 + 0.25 * 0.05 + 0.25 * 0.05, accuracy: 1e-7)
        XCTAssertEqual(BinaryMetrics.brierScore(scores: [0.5, 0.5], labels: [0, 1]), 0.25)
        XCTAssertNil(BinaryMetrics.rocAUC(scores: [0.1, 0.2], labels: [1, 1]), "one class: AUC undefined")
        // A diverged model scores NaN. The curve's tie loop never advanced past a NaN (NaN != NaN)
        // and appended points until the process ran out of memory; scikit-learn refuses NaN input.
        let scores: [Float] = [0.2, .nan, 0.7, .nan], labels = [0, 0, 1, 1]
        let m = BinaryMetrics.all(scores: scores, labels: labels, sequences: ["a", "a", "b", "b"])
        for key in ["auc", "average_precision", "accuracy", "eer", "sequence_auc", "brier", "ece"] { XCTAssertTrue(m[key]!.isNaN, "\(key) with NaN scores: \(m[key]!)") }
        let curve = BinaryMetrics.rocCurve(scores: scores, labels: labels)
        XCTAssertEqual(curve.fpr, [0]); XCTAssertEqual(curve.tpr, [0])
        XCTAssertEqual(BinaryMetrics.rocAUC(scores: [0.2, .infinity, 0.7, -.infinity], labels: [0, 0, 1, 1]), 0.25, "infinities still rank (one pair of four in order)")
    }
}
