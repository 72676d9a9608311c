/// BADM (MODEL.md §2): Sobel edges through `edge_encoder`, plus mean/max-pooled patch tokens
/// through `patch_processor`, fused into boundary evidence e_b.
public struct BoundaryBranch: Sendable {
    public let edgeEncoder: ArtifactCNN
    public let patchProcessor: MLPHead
    public let fusion: MLPHead
    public let classifier: Linear

    public struct Saved {
        let cnn: ArtifactCNN.Saved, pool: TokenMeanMax.Saved, patch: MLPHead.Saved, fusion: MLPHead.Saved
        let evidence: Tensor
    }

    public init(_ p: String, config c: RADARConfig, layout: ParameterLayout) {
        let d = c.embedDim, e = c.evidenceDim, bd = Float(c.branchDropout)
        edgeEncoder = ArtifactCNN("\(p).edge_encoder", layout: layout)
        patchProcessor = MLPHead("\(p).patch_processor", 2 * d, d, output: d / 2, dropout: bd, finalReLU: true, layout: layout)
        fusion = MLPHead("\(p).fusion", ArtifactCNN.outputChannels + d / 2, 2 * e, output: e, dropout: bd, layout: layout)
        classifier = Linear("\(p).classifier", e, 1, layout: layout)
    }

    /// x (B, 3, H, W), patch tokens (B, N, D) -> (evidence (B, E), logit (B, 1)).
    public func forward(_ x: Tensor, patches: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> (Tensor, Tensor, Saved) {
        // The edge map is the CNN's input (kept); the grey image under it is released.
        try x.expect4(-1, 3, -1, -1, in: "grayscale")
        let edges = ctx.tensor(Shape(x.shape[0], 1, x.shape[2], x.shape[3]))
        let mark = ctx.arena.mark()
        _ = try ImageTransforms.sobel(try ImageTransforms.grayscale(x, ctx), ctx, into: edges)
        ctx.arena.rewind(to: mark)
        let (edgeFeat, cnn) = try edgeEncoder.forward(edges, ctx)
        let pooled = TokenMeanMax.forward(patches, ctx)
        let (patchFeat, ps) = try patchProcessor.forward(Concat.forward(pooled.mean, pooled.max, ctx), ctx)
        let (evidence, fs) = try fusion.forward(Concat.forward(edgeFeat, patchFeat, ctx), ctx)
        let logit = try classifier.forward(evidence, ctx)
        return (evidence, logit, Saved(cnn: cnn, pool: pooled.saved, patch: ps, fusion: fs, evidence: evidence))
    }

    /// d evidence (all paths summed) -> d patch tokens (B, N, D).
    public func backward(dEvidence: Tensor, _ s: Saved, _ ctx: ExecutionContext) -> Tensor {
        let dCat = fusion.backward(dEvidence, s.fusion, ctx)!
        let (dEdge, dPatchFeat) = Concat.backward(dCat, first: ArtifactCNN.outputChannels, ctx)
        edgeEncoder.backward(dEdge, s.cnn, ctx)
        let dPooled = patchProcessor.backward(dPatchFeat, s.patch, ctx)!
        let (dMean, dMax) = Concat.backward(dPooled, first: dPooled.shape.last / 2, ctx)
        return TokenMeanMax.backward(dMean: dMean, dMax: dMax, s.pool, ctx)
    }
}

/// AADM (MODEL.md §3): the soft high-passed log spectrum through `freq_encoder`, plus the cls
/// token through `cls_processor`, fused into frequency evidence e_a.
public struct FrequencyBranch: Sendable {
    public let fftSize: Int
    public let highPass: HighPassFilter
    public let freqEncoder: ArtifactCNN
    public let clsProcessor: MLPHead
    public let fusion: MLPHead
    public let classifier: Linear

    public struct Saved { let cnn: ArtifactCNN.Saved, cls: MLPHead.Saved, fusion: MLPHead.Saved }

    public init(_ p: String, config c: RADARConfig, layout: ParameterLayout) {
        let d = c.embedDim, e = c.evidenceDim, bd = Float(c.branchDropout)
        fftSize = c.fftSize
        highPass = HighPassFilter(size: c.fftSize)
        freqEncoder = ArtifactCNN("\(p).freq_encoder", layout: layout)
        clsProcessor = MLPHead("\(p).cls_processor", d, d / 2, dropout: bd, layout: layout)
        fusion = MLPHead("\(p).fusion", ArtifactCNN.outputChannels + d / 2, 2 * e, output: e, dropout: bd, layout: layout)
        classifier = Linear("\(p).classifier", e, 1, layout: layout)
    }

    /// x (B, 3, H, W), cls (B, D) -> (evidence (B, E), logit (B, 1)).
    public func forward(_ x: Tensor, cls: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> (Tensor, Tensor, Saved) {
        // The spectrum is the CNN's input (kept); the grey, resized and |FFT| maps are released.
        try x.expect4(-1, 3, -1, -1, in: "grayscale")
        let spectrum = ctx.tensor(Shape(x.shape[0], 1, fftSize, fftSize))
        let mark = ctx.arena.mark()
        let gray = try ImageTransforms.grayscale(x, ctx)
        _ = try highPass.forward(try ImageTransforms.fftMagnitude(try ImageTransforms.resize(gray, to: fftSize, ctx), ctx), ctx, into: spectrum)
        ctx.arena.rewind(to: mark)
        let (freqFeat, cnn) = try freqEncoder.forward(spectrum, ctx)
        let (clsFeat, cs) = try clsProcessor.forward(cls, ctx)
        let (evidence, fs) = try fusion.forward(Concat.forward(freqFeat, clsFeat, ctx), ctx)
        let logit = try classifier.forward(evidence, ctx)
        return (evidence, logit, Saved(cnn: cnn, cls: cs, fusion: fs))
    }

    /// d evidence -> d cls (B, D).
    public func backward(dEvidence: Tensor, _ s: Saved, _ ctx: ExecutionContext) -> Tensor {
        let dCat = fusion.backward(dEvidence, s.fusion, ctx)!
        let (dFreq, dClsFeat) = Concat.backward(dCat, first: ArtifactCNN.outputChannels, ctx)
        freqEncoder.backward(dFreq, s.cnn, ctx)
        return clsProcessor.backward(dClsFeat, s.cls, ctx)!
    }
}
