/// Everything one forward pass produces (MODEL.md "Output shapes"). Views into the arena: valid
/// until the next pass.
public struct RADAROutputs {
    public let logit: Tensor, prob: Tensor, reasoningLogit: Tensor, externalLogit: Tensor, gatingAlpha: Tensor
    public let badmLogit: Tensor, aadmLogit: Tensor
    public let badmEvidence: Tensor, aadmEvidence: Tensor
    /// (B, T) and (B, T, 2).
    public let iterationLogits: Tensor, attentionHistory: Tensor
    /// mean |sigmoid(logit_T) - sigmoid(logit_{T-1})|, one device float (0 when T = 1).
    public let convergenceDelta: Tensor

    /// (name, tensor) pairs in the dump-step naming (`out.<name>`).
    public var named: [(String, Tensor)] {
        [("logit", logit), ("prob", prob), ("reasoning_logit", reasoningLogit), ("external_logit", externalLogit),
         ("gating_alpha", gatingAlpha), ("badm_logit", badmLogit), ("aadm_logit", aadmLogit),
         ("badm_evidence", badmEvidence), ("aadm_evidence", aadmEvidence), ("iteration_logits", iterationLogits),
         ("attention_history", attentionHistory)]
    }
}

/// Gradients of the loss with respect to the model outputs it reads.
public struct OutputGradients {
    public let logit: Tensor, badmLogit: Tensor, aadmLogit: Tensor
    public let badmEvidence: Tensor, aadmEvidence: Tensor, iterationLogits: Tensor
}

/// RADAR (MODEL.md): ViT-S encoder, BADM, AADM, ERM and gated fusion, with parameters named as
/// the PyTorch reference's state_dict. Holds the saved activations of its last forward pass.
public final class RADARModel: @unchecked Sendable {
    public let config: RADARConfig
    public let layout: ParameterLayout
    public let gatingLogit: ParameterSlot
    public let encoder: VisionTransformer
    public let badm: BoundaryBranch
    public let aadm: FrequencyBranch
    public let reasoning: EvidenceRefinement
    public let externalDual: MLPHead
    public let externalSingle: MLPHead

    // Saved state of the last forward pass (capacity reserved once; the step does not allocate).
    private var blockSaved: [VisionTransformer.BlockSaved] = []
    private var ermSteps: [EvidenceRefinement.Step] = []
    private var last: Pass?

    struct Pass {
        /// The encoder's output gradient and the buffer its blocks' gradients alternate with
        /// (training only), reserved below the encoder's saves, with the bf16 copy of their
        /// latest that the blocks' products read (where products round to bf16); and the arena's position after
        /// the encoder's forward (backward returns there once the heads and branches are done).
        let gradients: (Tensor, Tensor, Tensor?)?
        let encoderEnd: Arena.Mark
        let input: Tensor, tokens: Tensor, patches: Tensor, cls: Tensor
        let patch: Conv2d.Saved, norm: LayerNorm.Saved
        let badm: BoundaryBranch.Saved?, aadm: FrequencyBranch.Saved?
        let evidenceTokens: Tensor, initInput: Tensor, initSaved: MLPHead.Saved
        let external: MLPHead.Saved, externalInput: Tensor
        let outputs: RADAROutputs
    }

    public init(config: RADARConfig) throws {
        try config.validate()
        self.config = config
        let l = ParameterLayout()
        layout = l
        // PyTorch lists a module's own parameters before its children's.
        gatingLogit = l.parameter("_gating_logit", Shape())
        encoder = VisionTransformer("encoder", config: config, layout: l)
        badm = BoundaryBranch("badm", config: config, layout: l)
        aadm = FrequencyBranch("aadm", config: config, layout: l)
        reasoning = EvidenceRefinement("reasoning", config: config, layout: l)
        let e = config.evidenceDim, p = Float(config.dropout)
        externalDual = MLPHead("external_classifier_dual", 2 * e, e, output: 1, dropout: p, layout: l)
        externalSingle = MLPHead("external_classifier_single", e, e / 2, output: 1, dropout: p, layout: l)
        blockSaved.reserveCapacity(config.depth)
        ermSteps.reserveCapacity(config.reasoningIterations)
    }

    public var dual: Bool { config.useBadm && config.useAadm }

    /// First offset of every parameter whose name starts with `prefix`.
    func firstOffset(_ prefix: String) -> Int {
        layout.parameters.first { $0.name.hasPrefix(prefix) }?.offset ?? 0
    }

    /// Where backward's finished-gradient reports fall (computed once: the step must not search).
    private lazy var reasoningOffset = firstOffset("reasoning.")
    private lazy var branchesOffset = firstOffset("badm.")

    /// Parameters the active path never reads: they get no gradient and no optimizer update (as
    /// in PyTorch, where their .grad stays None).
    public var unusedParameterPrefixes: [String] {
        if dual { return ["reasoning.init_proj_single.", "external_classifier_single."] }
        return ["reasoning.init_proj_dual.", "external_classifier_dual.", config.useBadm ? "aadm." : "badm."]
    }

    public var activeSlots: [ParameterSlot] {
        let unused = unusedParameterPrefixes
        return layout.parameters.filter { s in !unused.contains { s.name.hasPrefix($0) } }
    }

    /// x (B, 3, H, W), normalised.
    public func forward(_ x: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> RADAROutputs {
        let be = ctx.backend
        let b = x.shape[0], d = config.embedDim, n = config.patchCount, e = config.evidenceDim, t = config.reasoningIterations
        let prof = ctx.profiler
        prof?.begin()
        // What outlives the pass's saves is reserved first, below them: the outputs (the caller
        // reads them after backward) and the encoder's gradient buffers. Backward then releases
        // the heads' and branches' saves before the encoder's backward, and each block's as it
        // leaves it, so their memory holds the later temporaries (as PyTorch frees saved tensors
        // during backward) instead of the arena growing past every save.
        let one = Shape(b, 1)
        let logit = ctx.tensor(one), prob = ctx.tensor(one), alpha = ctx.tensor(one)
        let reasoningLogit = ctx.tensor(one), external = ctx.tensor(one)
        let eb = ctx.tensor(Shape(b, e)), lb = ctx.tensor(one), ea = ctx.tensor(Shape(b, e)), la = ctx.tensor(one)
        let iterationLogits = ctx.tensor(Shape(b, t)), history = ctx.tensor(Shape(b, t, 2)), delta = ctx.tensor(Shape(1))
        let gradients = ctx.training
            ? (ctx.tensor(Shape(b, n + 1, d)), ctx.tensor(Shape(b, n + 1, d)),
               ctx.backend.roundsProductOperandsToBFloat16 && ctx.fuseResidualSums ? ctx.tensor(Shape(b, n + 1, d), dtype: .bfloat16) : nil) : nil
        let (tokens, patchSaved, normSaved) = try encoder.forward(x, ctx, saved: &blockSaved)
        let encoderEnd = ctx.arena.mark()
        let flat = tokens.reshaped(Shape(b, (n + 1) * d))
        let cls = ctx.tensor(Shape(b, d))
        be.sliceColumns(flat, srcCols: (n + 1) * d, offset: 0, into: cls, dstCols: d)
        let patches = ctx.tensor(Shape(b, n, d))
        be.sliceColumns(flat, srcCols: (n + 1) * d, offset: d, into: patches.reshaped(Shape(b, n * d)), dstCols: n * d)

        prof?.end(.encoderForward)
        let rb = config.useBadm ? try badm.forward(x, patches: patches, ctx) : nil
        RADARModel.keep(rb?.0, rb?.1, into: eb, lb, be)
        prof?.end(.boundaryForward)
        let ra = config.useAadm ? try aadm.forward(x, cls: cls, ctx) : nil
        RADARModel.keep(ra?.0, ra?.1, into: ea, la, be)
        prof?.end(.frequencyForward)

        // Evidence tokens: stack(e_b, e_a) is cat(e_b, e_a) seen as (B, 2, E); one branch -> (B, 1, E).
        let evidenceTokens: Tensor, initInput: Tensor
        if dual {
            initInput = Concat.forward(eb, ea, ctx)
            evidenceTokens = initInput.reshaped(Shape(b, 2, e))
        } else {
            initInput = config.useBadm ? eb : ea
            evidenceTokens = initInput.reshaped(Shape(b, 1, e))
        }
        be.fill(history, 0)
        let (initSaved, reasoned) = try reasoning.forward(
            tokens: evidenceTokens, initInput: initInput, dual: dual, historyColumn: config.useBadm ? 0 : 1, ctx,
            steps: &ermSteps, iterationLogits: iterationLogits, history: history.reshaped(Shape(b, 2 * t)))
        be.copy(reasoned, into: reasoningLogit)
        let (externalOut, extSaved) = try (dual ? externalDual : externalSingle).forward(initInput, ctx)
        be.copy(externalOut, into: external)

        be.gatedFusionForward(gate: ctx.params.value(gatingLogit), reasoning: reasoningLogit, external: external,
                              final: logit, prob: prob, alphaOut: alpha)
        be.fill(delta, 0)
        if t >= 2 {
            let a = ctx.tensor(Shape(b, 1)), p = ctx.tensor(Shape(b, 1))
            be.sliceColumns(iterationLogits, srcCols: t, offset: t - 1, into: a, dstCols: 1)
            be.sliceColumns(iterationLogits, srcCols: t, offset: t - 2, into: p, dstCols: 1)
            be.meanAbsSigmoidDifference(a, p, into: delta)
        }
        let out = RADAROutputs(logit: logit, prob: prob, reasoningLogit: reasoningLogit, externalLogit: external,
                               gatingAlpha: alpha, badmLogit: lb, aadmLogit: la, badmEvidence: eb, aadmEvidence: ea,
                               iterationLogits: iterationLogits, attentionHistory: history, convergenceDelta: delta)
        prof?.end(.reasoningForward)
        last = Pass(gradients: gradients, encoderEnd: encoderEnd, input: x, tokens: tokens, patches: patches, cls: cls, patch: patchSaved, norm: normSaved,
                    badm: rb?.2, aadm: ra?.2, evidenceTokens: evidenceTokens, initInput: initInput,
                    initSaved: initSaved, external: extSaved, externalInput: initInput, outputs: out)
        return out
    }

    /// A branch's evidence and logit into the reserved outputs (zeros when the branch is off).
    private static func keep(_ evidence: Tensor?, _ logit: Tensor?, into e: Tensor, _ l: Tensor, _ be: any Backend) {
        if let evidence, let logit {
            be.copy(evidence, into: e)
            be.copy(logit, into: l)
        } else {
            be.fill(e, 0)
            be.fill(l, 0)
        }
    }

    /// Accumulates every parameter gradient of the last forward pass.
    public func backward(_ g: OutputGradients, _ ctx: ExecutionContext) {
        guard let s = last else { preconditionFailure("RADARModel.backward called before forward") }
        let be = ctx.backend, p = ctx.params
        let b = s.input.shape[0], d = config.embedDim, n = config.patchCount, e = config.evidenceDim
        let t = config.reasoningIterations
        let o = s.outputs
        let prof = ctx.profiler
        prof?.begin()

        // What each part passes on is allocated first; each part's own temporaries are released
        // when it is done, so they do not sit under the encoder's backward (the step's peak).
        guard let (encoderGradient, spare, operandCopy) = s.gradients else { preconditionFailure("RADARModel.backward after an eval-mode forward") }
        let dTok = encoderGradient.reshaped(Shape(b, (n + 1) * d))
        be.fill(dTok, 0)
        let dEvidence = ctx.tensor(s.initInput.shape)
        var mark = ctx.arena.mark()
        let dReasoning = ctx.tensor(Shape(b, 1)), dExternal = ctx.tensor(Shape(b, 1))
        be.gatedFusionBackward(dFinal: g.logit, gate: p.value(gatingLogit), reasoning: o.reasoningLogit,
                               external: o.externalLogit, dReasoning: dReasoning, dExternal: dExternal,
                               dGate: p.grad(gatingLogit))
        let dInitExternal = (dual ? externalDual : externalSingle).backward(dExternal, s.external, ctx)!
        // The final reasoning logit is the last iteration logit.
        let dIter = ctx.tensor(Shape(b, t))
        be.copy(g.iterationLogits, into: dIter)
        let dLast = ctx.tensor(Shape(b, 1))
        be.sliceColumns(dIter, srcCols: t, offset: t - 1, into: dLast, dstCols: 1)
        be.add(dLast, dReasoning, into: dLast)
        be.copyColumns(dLast, srcCols: 1, into: dIter, dstCols: t, offset: t - 1)
        let (dTokens, dInit) = reasoning.backward(dIterationLogits: dIter, tokens: s.evidenceTokens, dual: dual,
                                                  initSaved: s.initSaved, steps: ermSteps, ctx)
        // d initInput (= the evidence, concatenated when dual) from ERM's tokens, init and the
        // external classifier.
        be.add(dTokens.reshaped(s.initInput.shape), dInit, into: dEvidence)
        be.add(dEvidence, dInitExternal, into: dEvidence)
        ctx.arena.rewind(to: mark)

        prof?.end(.reasoningBackward)
        ctx.parallel.gradientsFinal(from: reasoningOffset)
        if config.useBadm, let bs = s.badm {
            mark = ctx.arena.mark()
            let dEb = ctx.tensor(Shape(b, e))
            if dual { be.sliceColumns(dEvidence, srcCols: 2 * e, offset: 0, into: dEb, dstCols: e) } else { be.copy(dEvidence, into: dEb) }
            be.add(dEb, g.badmEvidence, into: dEb)
            be.add(dEb, badm.classifier.backward(g.badmLogit, x: o.badmEvidence, ctx)!, into: dEb)
            let dPatches = badm.backward(dEvidence: dEb, bs, ctx)
            be.copyColumns(dPatches.reshaped(Shape(b, n * d)), srcCols: n * d, into: dTok, dstCols: (n + 1) * d, offset: d)
            ctx.arena.rewind(to: mark)
        }
        prof?.end(.boundaryBackward)
        if config.useAadm, let asv = s.aadm {
            mark = ctx.arena.mark()
            let dEa = ctx.tensor(Shape(b, e))
            if dual { be.sliceColumns(dEvidence, srcCols: 2 * e, offset: e, into: dEa, dstCols: e) } else { be.copy(dEvidence, into: dEa) }
            be.add(dEa, g.aadmEvidence, into: dEa)
            be.add(dEa, aadm.classifier.backward(g.aadmLogit, x: o.aadmEvidence, ctx)!, into: dEa)
            let dCls = aadm.backward(dEvidence: dEa, asv, ctx)
            be.copyColumns(dCls, srcCols: d, into: dTok, dstCols: (n + 1) * d, offset: 0)
            ctx.arena.rewind(to: mark)
        }
        prof?.end(.frequencyBackward)
        ctx.parallel.gradientsFinal(from: branchesOffset)
        // Everything the pass kept past the encoder is read: its memory is the encoder backward's.
        ctx.arena.rewind(to: s.encoderEnd)
        encoder.backward(encoderGradient, spare: spare, operandCopy: operandCopy, patch: s.patch, norm: s.norm, blocks: blockSaved, ctx)
        prof?.end(.encoderBackward)
        ctx.parallel.gradientsFinal(from: 0)
    }
}
