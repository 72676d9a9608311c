/// timm's `vit_small_patch16_224` with num_classes=0 (MODEL.md §1), any size: patch embedding,
/// cls token, learned position embedding, pre-norm blocks, final LayerNorm. No dropout.
public struct VisionTransformer: Sendable {
    public struct Block: Sendable {
        public let norm1: LayerNorm, attn: SelfAttention, norm2: LayerNorm, fc1: Linear, fc2: Linear
    }

    public let config: RADARConfig
    public let clsToken: ParameterSlot, posEmbed: ParameterSlot
    public let patchEmbed: Conv2d
    public let blocks: [Block]
    public let norm: LayerNorm

    public struct BlockSaved {
        /// The arena's position before the block's first save: backward releases the block's saves
        /// (and all above them) by returning here once its input gradient is written.
        let start: Arena.Mark
        let n1: LayerNorm.Saved, attn: SelfAttention.Saved, n2: LayerNorm.Saved
        /// GELU's output (fc2's input): nil when backward recomputes it from `gelu.x`.
        let h: Tensor, gelu: GELU.Saved, act: Tensor?
    }

    public struct Saved {
        let patch: Conv2d.Saved
        var blocks: [BlockSaved]
        let norm: LayerNorm.Saved
    }

    /// Registers `<prefix>.cls_token`, `.pos_embed`, `.patch_embed.proj.*`, `.blocks.{i}.*`, `.norm.*`
    /// in timm's state_dict order.
    public init(_ prefix: String, config c: RADARConfig, layout: ParameterLayout) {
        config = c
        let d = c.embedDim
        clsToken = layout.parameter("\(prefix).cls_token", Shape(1, 1, d))
        posEmbed = layout.parameter("\(prefix).pos_embed", Shape(1, c.patchCount + 1, d))
        patchEmbed = Conv2d("\(prefix).patch_embed.proj", 3, d, kernel: c.patchSize, stride: c.patchSize, layout: layout)
        blocks = (0..<c.depth).map { i in
            let p = "\(prefix).blocks.\(i)"
            return Block(norm1: LayerNorm("\(p).norm1", d, eps: 1e-6, layout: layout),
                         attn: SelfAttention("\(p).attn", dim: d, heads: c.numHeads, layout: layout),
                         norm2: LayerNorm("\(p).norm2", d, eps: 1e-6, layout: layout),
                         fc1: Linear("\(p).mlp.fc1", d, c.mlpHidden, layout: layout),
                         fc2: Linear("\(p).mlp.fc2", c.mlpHidden, d, layout: layout))
        }
        norm = LayerNorm("\(prefix).norm", d, eps: 1e-6, layout: layout)
    }

    /// x (B, 3, H, W) -> tokens (B, N+1, D) after the final norm. `saved.blocks` must hold
    /// `depth` slots reserved by the caller (see `makeSaved`) so the step does not allocate.
    public func forward(_ x: Tensor, _ ctx: ExecutionContext, saved: inout [BlockSaved]) throws(ShapeMismatch)
        -> (Tensor, Conv2d.Saved, LayerNorm.Saved)
    {
        let b = x.shape[0], d = config.embedDim, n = config.patchCount
        if x.shape.rank != 4 || x.shape[1] != 3 || x.shape[2] != config.imgSize || x.shape[3] != config.imgSize {
            throw ShapeMismatch(layer: "encoder", expected: "(B, 3, \(config.imgSize), \(config.imgSize))", actual: x.shape)
        }
        let be = ctx.backend
        // [cls | patches] + pos_embed, as (B, (N+1) D) rows; what builds it is released after.
        let tokens = ctx.tensor(Shape(b, n + 1, d))
        let flat = tokens.reshaped(Shape(b, (n + 1) * d))
        let mark = ctx.arena.mark()
        let (patches, patchSaved) = try patchEmbed.forward(x, ctx)  // (B, D, g, g)
        let tokensNoCls = ctx.tensor(Shape(b, n, d))
        be.transposeLastTwo(patches.reshaped(Shape(b, d, n)), tokensNoCls)
        let cls = ctx.zeros(Shape(b, d))
        be.addRowBias(ctx.params.value(clsToken).reshaped(Shape(d)), into: cls)
        be.copyColumns(cls, srcCols: d, into: flat, dstCols: (n + 1) * d, offset: 0)
        be.copyColumns(tokensNoCls.reshaped(Shape(b, n * d)), srcCols: n * d, into: flat, dstCols: (n + 1) * d, offset: d)
        be.addRowBias(ctx.params.value(posEmbed).reshaped(Shape((n + 1) * d)), into: flat)
        ctx.arena.rewind(to: mark)
        var h = tokens
        saved.removeAll(keepingCapacity: true)
        // Under bf16 activations every tensor below that only products read is kept in bf16; the
        // residual stream (h, h1, h2) stays fp32.
        let dt = ctx.productInputType
        // Eval mode: the blocks write their outputs into `tokens` and `spare` in turn, and each
        // block's tensors are released once its output is written (nothing reads them again).
        let releasing = !ctx.training && ctx.releaseBlocksInEval
        let fuse = ctx.fuseResidualSums
        let spare = releasing && !blocks.isEmpty ? ctx.tensor(Shape(b, n + 1, d)) : tokens
        for i in 0..<blocks.count {
            let blk = blocks[i]
            let blockStart = ctx.arena.mark()
            let (a, n1) = try blk.norm1.forward(h, ctx, output: dt)
            // The residual sums are formed by the branches' last products (the residual and the
            // bias set in the output, the product accumulated onto them): no add passes. Unfused,
            // they are written over the branch outputs (no backward reads those).
            let (h1, attnSaved) = try blk.attn.forward(a, ctx, residual: fuse ? h : nil)
            if !fuse { be.add(h, h1, into: h1) }
            let (m, n2) = try blk.norm2.forward(h1, ctx, output: dt)
            let fc1Out = try blk.fc1.forward(m, ctx, output: dt)
            // When backward recomputes, GELU's output (4D wide, the block's largest save with
            // fc1's output) is released once fc2 has read it: fc2's output is reserved below it.
            // Backward runs GELU again on the kept fc1 output (the same bits) for fc2's weight
            // gradient. PyTorch keeps both; at batch 128 (ViT-S, bf16) this keeps 908 MiB less.
            let recomputeAct = ctx.recomputeInBackward && !releasing
            let reserved = recomputeAct ? ctx.tensor(h1.shape) : nil
            let geluMark = ctx.arena.mark()
            let (act, geluSaved) = GELU.forward(fc1Out, ctx, output: dt)
            // Eval mode: the block's output straight into the buffer the next block reads.
            let next = releasing ? (h.base == tokens.base ? spare : tokens).reshaped(h1.shape) : reserved
            let h2: Tensor
            if fuse {
                h2 = try blk.fc2.forward(act, ctx, into: next, residual: h1)
            } else {
                let branch = try blk.fc2.forward(act, ctx, into: reserved)
                h2 = next ?? branch
                be.add(h1, branch, into: h2)
            }
            if recomputeAct { ctx.arena.rewind(to: geluMark) }
            if releasing {
                ctx.arena.rewind(to: blockStart)
                h = h2
                continue
            }
            saved.append(BlockSaved(start: blockStart, n1: n1, attn: attnSaved, n2: n2, h: m, gelu: geluSaved, act: recomputeAct ? nil : act))
            h = h2
        }
        let (out, normSaved) = try norm.forward(h, ctx)
        return (out, patchSaved, normSaved)
    }

    /// dTokens (B, N+1, D) -> parameter gradients (the image needs no gradient). dTokens and
    /// `spare` (same shape) must lie below the blocks' saves (reserved before the forward): the
    /// blocks' input gradients alternate between them while each block's temporaries take the
    /// memory of the saves of the block above it, released once that block is done (so the
    /// arena's peak here is the saves of the blocks still to go plus one block's backward, not
    /// every save plus it). Whatever the arena held above the last block's saves is reused too.
    /// `operandCopy` (bf16, dTokens' shape; where products round to bf16, else nil), also below the
    /// saves: each residual gradient's bf16 copy, written by the LayerNorm backward that forms it
    /// and read by the products of the Linear layer that takes it next (fc2's, then the attention
    /// projection's), so no conversion pass; one buffer serves all, each copy being read before
    /// the next is written.
    public func backward(_ dTokens: Tensor, spare: Tensor, operandCopy: Tensor? = nil, patch: Conv2d.Saved, norm normSaved: LayerNorm.Saved,
                         blocks saved: [BlockSaved], _ ctx: ExecutionContext) {
        let be = ctx.backend
        let b = dTokens.shape[0], n = config.patchCount, d = config.embedDim
        let fuse = ctx.fuseResidualSums
        let copy = fuse ? operandCopy.map { $0.reshaped(dTokens.shape) } : nil
        // A block's fc2 and attention projection take, as output gradient, a LayerNorm backward's
        // output (the final norm's, the block above's norm1's with the residual stream's gradient,
        // norm2's likewise): their bias gradients are summed by that LayerNorm backward as it writes
        // them (one pass on a GPU), where the sum is the whole gradient (the residual joined in it).
        // (By index: `blocks.last` copies a whole Block out, a heap allocation in a debug build.)
        var fc2Bias: Tensor? = nil
        if !blocks.isEmpty, let bias = blocks[blocks.count - 1].fc2.bias { fc2Bias = ctx.params.grad(bias) }
        var dh = norm.backward(dTokens, normSaved, ctx, into: spare, copy: copy, biasGradient: fc2Bias)
        ctx.parallel.gradientsFinal(from: norm.weight.offset)
        var i = blocks.count - 1
        while i >= 0 {
            let blk = blocks[i], s = saved[i], out = dh.base == spare.base ? dTokens : spare
            if i + 1 < blocks.count { ctx.arena.rewind(to: saved[i + 1].start) }
            let mark = ctx.arena.mark()
            i -= 1
            // h2 = h1 + fc2(gelu(fc1(norm2(h1))))
            // The MLP's hidden gradients (4D wide) in the dtype of the activations they belong
            // to, as AMP's: under bf16 activations fc2 writes dAct as bf16, GELU reads it and
            // writes dFc1 as bf16, which fc1's products read as they are (its bias gradient sums it
            // in fp32). No fp32 copy of either and no conversion in between.
            // The MLP's gradients are released once dH1 is out of them (they would otherwise sit
            // under the attention's backward, the block's largest).
            let dH1 = ctx.tensor(dh.shape)
            let mlp = ctx.arena.mark()
            let act = s.act ?? GELU.forward(s.gelu.x, ctx, output: s.gelu.x.dtype).0
            let dAct = blk.fc2.backward(dh, x: act, ctx, inputGradientType: act.dtype, dyOperand: copy, biasSummed: fc2Bias != nil)!
            // fc1's bias gradient summed by GELU backward as it writes dFc1 (one pass on a GPU).
            let fc1Bias = blk.fc1.bias.map { ctx.params.grad($0) }
            let dFc1 = GELU.backward(dAct, s.gelu, ctx, output: s.gelu.x.dtype, biasGradient: fc1Bias)
            let dM = blk.fc1.backward(dFc1, x: s.h, ctx, biasSummed: fc1Bias != nil)!
            // dH1 = dh + norm2's input gradient, summed (and copied) by the LayerNorm's kernel.
            var projBias: Tensor? = nil
            if fuse, let bias = blk.attn.proj.bias { projBias = ctx.params.grad(bias) }
            blk.norm2.backward(dM, s.n2, ctx, into: dH1, residual: fuse ? dh : nil, copy: copy, biasGradient: projBias)
            ctx.arena.rewind(to: mlp)
            if !fuse { be.add(dH1, dh, into: dH1) }
            // h1 = h + attn(norm1(h)): norm1's input gradient plus dH1 straight into the buffer
            // passed on.
            let dA = blk.attn.backward(dH1, s.attn, ctx, dyOperand: copy, projBiasSummed: projBias != nil)
            fc2Bias = nil
            if fuse, i >= 0, let bias = blocks[i].fc2.bias { fc2Bias = ctx.params.grad(bias) }
            blk.norm1.backward(dA, s.n1, ctx, into: out, residual: fuse ? dH1 : nil, copy: copy, biasGradient: fc2Bias)
            if !fuse { be.add(out, dH1, into: out) }
            ctx.arena.rewind(to: mark)
            dh = out
            ctx.parallel.gradientsFinal(from: blk.norm1.weight.offset)
        }
        let flat = dh.reshaped(Shape(b, (n + 1) * d))
        be.accumulateColumnSums(flat, into: ctx.params.grad(posEmbed).reshaped(Shape((n + 1) * d)))
        let dCls = ctx.tensor(Shape(b, d))
        be.sliceColumns(flat, srcCols: (n + 1) * d, offset: 0, into: dCls, dstCols: d)
        be.accumulateColumnSums(dCls, into: ctx.params.grad(clsToken).reshaped(Shape(d)))
        let dPatchTokens = ctx.tensor(Shape(b, n, d))
        be.sliceColumns(flat, srcCols: (n + 1) * d, offset: d, into: dPatchTokens.reshaped(Shape(b, n * d)), dstCols: n * d)
        let dPatches = ctx.tensor(Shape(b, d, n))
        be.transposeLastTwo(dPatchTokens, dPatches)
        patchEmbed.backward(dPatches.reshaped(Shape(b, d, config.gridSize, config.gridSize)), patch, ctx, inputGradient: false)
    }
}
