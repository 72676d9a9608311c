import Foundation

/// Every Backend kernel on a device against the CPU backend: the same inputs (odd shapes, seeded
/// values) on both, then every tensor of the call compared (outputs, and inputs too, so a kernel
/// that writes where it should not is caught). `radar check-device` runs it on a real GPU; the
/// tests run it on the emulated device.
public enum KernelCheck {
    public struct Result: Sendable {
        public let kernel: String
        /// Largest |device - cpu| / (atol + rtol |cpu|) over the call's tensors: at most 1 passes.
        public let worst: Double
        public let maxAbsError: Double
        public let detail: String
        public var passed: Bool { worst <= 1 }
    }

    /// How a tensor of a case is filled.
    enum Fill {
        case normal, positive, unit, zeros, binary
        case indices(Int)
        case constant(Float)
    }

    struct Case {
        let name: String
        let tensors: [(Shape, Fill)]
        /// Tensors not compared (backend-specific scratch).
        var ignore: Set<Int> = []
        var rtol: Double = 1e-4, atol: Double = 1e-5
        /// Tensors whose elements are sums that may cancel (a row's dot product): compared within
        /// atol + rtol times the tensor's largest magnitude, not the element's own (a result near
        /// zero carries its terms' rounding, not its own size's).
        var normwise: Set<Int> = []
        let run: (any Backend, [Tensor]) -> Void
    }

    /// A seeded normal generator (Box-Muller over a 64-bit LCG).
    struct Values {
        var state: UInt64
        mutating func uniform() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return (Float(state >> 40) + 0.5) / Float(1 << 24)
        }
        mutating func normal() -> Float {
            let u = uniform(), v = uniform()
            return (-2 * logf(u)).squareRoot() * cosf(2 * .pi * v)
        }
        mutating func fill(_ n: Int, _ f: Fill) -> [Float] {
            (0..<n).map { _ in
                switch f {
                case .normal: return normal()
                case .positive: return 0.2 + abs(normal())
                case .unit: return uniform()
                case .zeros: return 0
                case .binary: return uniform() < 0.5 ? 0 : 1
                case .indices(let k): return Float(min(Int(uniform() * Float(k)), k - 1))
                case .constant(let c): return c
                }
            }
        }
    }

    static var cases: [Case] {
        let conv = ConvolutionGeometry(batch: 2, inChannels: 3, height: 9, width: 7, outChannels: 5, kernel: 3, stride: 2, padding: 1)
        let cpu = CPUBackend(threads: 1)
        let ws = cpu.convolutionWorkspaceCount(conv), scratch = cpu.convolutionBackwardScratchCount(conv, inputGradient: true)
        let y = Shape(2, 5, conv.outHeight, conv.outWidth), x = Shape(2, 3, 9, 7)
        let bchw = Shape(3, 4, 5, 6), c4 = Shape(4)
        // Channel reductions: planes larger than a block (a strided slice per thread, then the
        // tree); column reductions: rows over several chunk boundaries (the GPU sums chunks of 8-64 rows).
        let planes = Shape(3, 4, 17, 19)
        let (e, h, tk) = (12, 3, 5)  // reasoning: embedding, heads, tokens
        func t(_ s: Shape, _ f: Fill = .normal) -> (Shape, Fill) { (s, f) }
        return [
            Case(name: "fill", tensors: [t(Shape(37))]) { b, v in b.fill(v[0], 0.25) },
            Case(name: "copy", tensors: [t(Shape(37)), t(Shape(37))]) { b, v in b.copy(v[0], into: v[1]) },
            Case(name: "add", tensors: [t(Shape(37)), t(Shape(37)), t(Shape(37))]) { b, v in b.add(v[0], v[1], into: v[2]) },
            // Four elements per access where aligned (above); views one element in, one by one.
            Case(name: "addUnaligned", tensors: [t(Shape(37)), t(Shape(37)), t(Shape(37))]) { b, v in
                b.add(Tensor(v[0].base + 1, Shape(36)), Tensor(v[1].base + 1, Shape(36)), into: Tensor(v[2].base + 1, Shape(36)))
            },
            Case(name: "addRowBias", tensors: [t(Shape(7)), t(Shape(5, 7))]) { b, v in b.addRowBias(v[0], into: v[1]) },
            Case(name: "addChannelBias", tensors: [t(Shape(3)), t(Shape(2, 3, 5, 4))]) { b, v in b.addChannelBias(v[0], into: v[1]) },
            Case(name: "accumulateColumnSums", tensors: [t(Shape(150, 7)), t(Shape(7))]) { b, v in b.accumulateColumnSums(v[0], into: v[1]) },
            Case(name: "reluForward", tensors: [t(Shape(37)), t(Shape(37))]) { b, v in b.reluForward(v[0], v[1]) },
            Case(name: "reluBackward", tensors: [t(Shape(37)), t(Shape(37)), t(Shape(37))]) { b, v in b.reluBackward(v[0], y: v[1], v[2]) },
            // In place (dx = dy), as ArtifactCNN's backward calls it.
            Case(name: "reluBackward/inPlace", tensors: [t(Shape(37)), t(Shape(37))]) { b, v in b.reluBackward(v[0], y: v[1], v[0]) },
            Case(name: "geluForward", tensors: [t(Shape(37)), t(Shape(37))]) { b, v in b.geluForward(v[0], v[1], cdf: nil) },
            Case(name: "geluForward/cdf", tensors: [t(Shape(37)), t(Shape(37)), t(Shape(37))]) { b, v in b.geluForward(v[0], v[1], cdf: v[2]) },
            Case(name: "geluBackward", tensors: [t(Shape(37)), t(Shape(37)), t(Shape(37))]) { b, v in
                b.geluBackward(v[0], x: v[1], cdf: nil, v[2])
            },
            Case(name: "geluBackward/cdf", tensors: [t(Shape(37)), t(Shape(37)), t(Shape(37), .unit), t(Shape(37))]) { b, v in
                b.geluBackward(v[0], x: v[1], cdf: v[2], v[3])
            },
            // bf16 x and y (fc1's output and GELU's under bf16 activations), read and written as
            // they are: y through an fp32 view (tensor 1), 38 elements so one is past a multiple of 4.
            Case(name: "geluForward/bf16", tensors: [t(Shape(38)), t(Shape(38)), t(Shape(38))]) { b, v in
                withBFloat16(b, v[0]) { x in
                    let y = Tensor(b.allocate(DType.bfloat16.floats(38)), Shape(38), dtype: .bfloat16)
                    b.geluForward(x, y, cdf: v[2])
                    b.convert(y, into: v[1])
                    b.release(y.base)
                }
            },
            // No CDF (recomputed): CUDA's four-at-a-time path, the tail of 2 one by one.
            Case(name: "geluForward/bf16/recompute", tensors: [t(Shape(38)), t(Shape(38))]) { b, v in
                withBFloat16(b, v[0]) { x in
                    withBFloat16(b, v[1]) { y in
                        b.geluForward(x, y, cdf: nil)
                        b.convert(y, into: v[1])
                    }
                }
            },
            Case(name: "geluBackward/bf16", tensors: [t(Shape(38)), t(Shape(38)), t(Shape(38))]) { b, v in
                withBFloat16(b, v[1]) { x in b.geluBackward(v[0], x: x, cdf: nil, v[2]) }
            },
            // bf16 dy, x and dx (fc2's and fc1's gradients under bf16 activations): dx through an
            // fp32 view (tensor 2); a last-bit difference in fp32 may round it one bf16 step apart.
            Case(name: "geluBackward/bf16dx", tensors: [t(Shape(38)), t(Shape(38)), t(Shape(38))], rtol: 1e-2, atol: 1e-4) { b, v in
                withBFloat16(b, v[0]) { dy in
                    withBFloat16(b, v[1]) { x in
                        withBFloat16(b, v[2]) { dx in
                            b.geluBackward(dy, x: x, cdf: nil, dx)
                            b.convert(dx, into: v[2])
                        }
                    }
                }
            },
            // GELU backward with dx's column sums (fc1's bias gradient, one pass on a GPU): fp32
            // with a kept CDF on an odd width; bf16 dy, x and dx on a width of 4s (the GPU's
            // four-column path), the sums read back from the bf16 dx.
            Case(name: "geluBackward/columnSums", tensors: [t(Shape(150, 7)), t(Shape(150, 7)), t(Shape(150, 7), .unit),
                                                             t(Shape(150, 7)), t(Shape(7))], normwise: [4]) { b, v in
                b.geluBackward(v[0], x: v[1], cdf: v[2], v[3], columnSumsInto: v[4])
            },
            Case(name: "geluBackward/columnSums/bf16", tensors: [t(Shape(150, 12)), t(Shape(150, 12)), t(Shape(150, 12)), t(Shape(12))],
                 rtol: 1e-2, atol: 1e-4, normwise: [3]) { b, v in
                withBFloat16(b, v[0]) { dy in
                    withBFloat16(b, v[1]) { x in
                        withBFloat16(b, v[2]) { dx in
                            b.geluBackward(dy, x: x, cdf: nil, dx, columnSumsInto: v[3])
                            b.convert(dx, into: v[2])
                        }
                    }
                }
            },
            Case(name: "accumulateColumnSums/bf16", tensors: [t(Shape(150, 7)), t(Shape(7))]) { b, v in
                withBFloat16(b, v[0]) { src in b.accumulateColumnSums(src, into: v[1]) }
            },
            Case(name: "softmaxForward", tensors: [t(Shape(5, 37)), t(Shape(5, 37))]) { b, v in b.softmaxForward(v[0], v[1], cols: 37) },
            // Rows longer than the kernels keep in registers (256 columns) take the second path.
            Case(name: "softmaxLongRows", tensors: [t(Shape(3, 300)), t(Shape(3, 300)), t(Shape(3, 300)), t(Shape(3, 300))]) { b, v in
                b.softmaxForward(v[0], v[1], cols: 300)
                b.softmaxBackward(v[2], y: v[1], v[3], cols: 300)
            },
            Case(name: "softmaxBackward", tensors: [t(Shape(5, 37)), t(Shape(5, 37), .unit), t(Shape(5, 37))]) { b, v in
                b.softmaxBackward(v[0], y: v[1], v[2], cols: 37)
            },
            Case(name: "dropoutForward", tensors: [t(Shape(301)), t(Shape(301))]) { b, v in
                b.dropoutForward(v[0], v[1], p: 0.3, stream: RandomStream(seed: 9, stream: 4))
            },
            Case(name: "dropoutBackward", tensors: [t(Shape(301)), t(Shape(301))]) { b, v in
                b.dropoutBackward(v[0], v[1], p: 0.3, stream: RandomStream(seed: 9, stream: 4))
            },
            Case(name: "layerNormForward", tensors: [t(Shape(5, 37)), t(Shape(37)), t(Shape(37)), t(Shape(5, 37)), t(Shape(5)), t(Shape(5))]) { b, v in
                b.layerNormForward(v[0], gamma: v[1], beta: v[2], eps: 1e-6, v[3], mean: v[4], rstd: v[5])
            },
            // bf16 y (the LayerNorms only products read, under bf16 activations), compared through
            // an fp32 view (tensor 3).
            Case(name: "layerNormForward/bf16", tensors: [t(Shape(5, 37)), t(Shape(37)), t(Shape(37)), t(Shape(5, 37)), t(Shape(5)), t(Shape(5))]) { b, v in
                let y = Tensor(b.allocate(DType.bfloat16.floats(5 * 37)), Shape(5, 37), dtype: .bfloat16)
                b.layerNormForward(v[0], gamma: v[1], beta: v[2], eps: 1e-6, y, mean: v[4], rstd: v[5])
                b.convert(y, into: v[3])
                b.release(y.base)
            },
            Case(name: "layerNormBackward", tensors: [t(Shape(150, 37)), t(Shape(150, 37)), t(Shape(37)), t(Shape(150)), t(Shape(150), .positive),
                                                      t(Shape(150, 37)), t(Shape(37)), t(Shape(37))]) { b, v in
                b.layerNormBackward(v[0], x: v[1], gamma: v[2], mean: v[3], rstd: v[4], v[5], dGamma: v[6], dBeta: v[7])
            },
            // The residual stream's gradient joined by the kernel (tensor 8), and dx's bf16 copy,
            // compared through an fp32 view (tensor 9; one bf16 step, 2^-8 relative, where the
            // device's dx differs from the CPU's in its last bits: rtol 1e-2).
            Case(name: "layerNormBackward/residual", tensors: [t(Shape(150, 37)), t(Shape(150, 37)), t(Shape(37)), t(Shape(150)),
                                                               t(Shape(150), .positive), t(Shape(150, 37)), t(Shape(37)), t(Shape(37)),
                                                               t(Shape(150, 37)), t(Shape(150, 37))], rtol: 1e-2, atol: 1e-4) { b, v in
                let copy = Tensor(b.allocate(DType.bfloat16.floats(150 * 37)), Shape(150, 37), dtype: .bfloat16)
                b.layerNormBackward(v[0], x: v[1], gamma: v[2], mean: v[3], rstd: v[4], v[5], dGamma: v[6], dBeta: v[7],
                                    residual: v[8], dxCopy: copy)
                b.convert(copy, into: v[9])
                b.release(copy.base)
            },
            // Enough rows for the GPU's one-pass kernel (138 chunks of 8; it takes at least 132),
            // with the residual and dx's column sums (tensor 9: a bias gradient) formed as dx is written.
            Case(name: "layerNormBackward/onePass", tensors: [t(Shape(1100, 37)), t(Shape(1100, 37)), t(Shape(37)), t(Shape(1100)),
                                                              t(Shape(1100), .positive), t(Shape(1100, 37)), t(Shape(37)), t(Shape(37)),
                                                              t(Shape(1100, 37)), t(Shape(37))], normwise: [6, 7, 9]) { b, v in
                b.layerNormBackward(v[0], x: v[1], gamma: v[2], mean: v[3], rstd: v[4], v[5], dGamma: v[6], dBeta: v[7],
                                    residual: v[8], dxCopy: nil, dxColumnSumsInto: v[9])
            },
            // Rows of 130 columns (five warps for eight rows a group in the staged build,
            // RADAR_LAYERNORM_BACKWARD=staged), 275 chunks of 8: the one-pass kernel with the
            // residual, dx's bf16 copy (tensor 9, through an fp32 view) and dx's column sums (tensor 10).
            Case(name: "layerNormBackward/onePass/wide", tensors: [t(Shape(2200, 130)), t(Shape(2200, 130)), t(Shape(130)), t(Shape(2200)),
                                                                   t(Shape(2200), .positive), t(Shape(2200, 130)), t(Shape(130)), t(Shape(130)),
                                                                   t(Shape(2200, 130)), t(Shape(2200, 130)), t(Shape(130))],
                 rtol: 1e-2, atol: 1e-4, normwise: [6, 7, 10]) { b, v in
                let copy = Tensor(b.allocate(DType.bfloat16.floats(2200 * 130)), Shape(2200, 130), dtype: .bfloat16)
                b.layerNormBackward(v[0], x: v[1], gamma: v[2], mean: v[3], rstd: v[4], v[5], dGamma: v[6], dBeta: v[7],
                                    residual: v[8], dxCopy: copy, dxColumnSumsInto: v[10])
                b.convert(copy, into: v[9])
                b.release(copy.base)
            },
            Case(name: "channelMoments", tensors: [t(planes), t(c4), t(c4)]) { b, v in b.channelMoments(v[0], mean: v[1], variance: v[2]) },
            Case(name: "channelNormalize", tensors: [t(bchw), t(c4), t(c4, .positive), t(c4), t(c4), t(bchw)]) { b, v in
                b.channelNormalize(v[0], mean: v[1], invStd: v[2], gamma: v[3], beta: v[4], v[5])
            },
            Case(name: "channelGradientSums", tensors: [t(planes), t(planes), t(c4), t(c4, .positive), t(c4), t(c4)]) { b, v in
                b.channelGradientSums(v[0], x: v[1], mean: v[2], invStd: v[3], sumDy: v[4], sumDyXhat: v[5])
            },
            Case(name: "accumulateChannelSums", tensors: [t(planes), t(c4)]) { b, v in b.accumulateChannelSums(v[0], into: v[1]) },
            Case(name: "batchNormUpdateStatistics", tensors: [t(c4), t(c4, .positive), t(c4), t(c4), t(c4, .positive)]) { b, v in
                b.batchNormUpdateStatistics(mean: v[0], variance: v[1], count: 90, eps: 1e-5, momentum: 0.1, invStd: v[2], runningMean: v[3],
                                            runningVar: v[4])
            },
            Case(name: "inverseStandardDeviation", tensors: [t(c4, .positive), t(c4)]) { b, v in b.inverseStandardDeviation(v[0], eps: 1e-5, v[1]) },
            Case(name: "batchNormLocalSums", tensors: [t(c4), t(c4, .positive), t(Shape(9))]) { b, v in
                b.batchNormLocalSums(mean: v[0], variance: v[1], count: 90, into: v[2])
            },
            Case(name: "batchNormGlobalMoments", tensors: [t(Shape(9), .positive), t(c4), t(c4)]) { b, v in
                b.batchNormGlobalMoments(v[0], channels: 4, mean: v[1], variance: v[2])
            },
            Case(name: "batchNormInputGradient", tensors: [t(bchw), t(bchw), t(c4), t(c4, .positive), t(c4), t(c4), t(c4), t(bchw)]) { b, v in
                b.batchNormInputGradient(v[0], x: v[1], mean: v[2], invStd: v[3], gamma: v[4], sumDy: v[5], sumDyXhat: v[6], count: 90, v[7])
            },
            Case(name: "batchNormInputGradient/inPlace", tensors: [t(bchw), t(bchw), t(c4), t(c4, .positive), t(c4), t(c4), t(c4)]) { b, v in
                b.batchNormInputGradient(v[0], x: v[1], mean: v[2], invStd: v[3], gamma: v[4], sumDy: v[5], sumDyXhat: v[6], count: 90, v[0])
            },
            Case(name: "convolutionForward", tensors: [t(x), t(Shape(5, 3, 3, 3)), t(Shape(5)), t(Shape(ws), .zeros), t(y)], ignore: [3]) { b, v in
                b.convolutionForward(v[0], weight: v[1], bias: v[2], conv, workspace: v[3], v[4])
            },
            Case(name: "convolutionBackward", tensors: [t(x), t(Shape(5, 3, 3, 3)), t(Shape(ws), .zeros), t(y), t(Shape(scratch), .zeros),
                                                        t(Shape(5, 3, 3, 3)), t(Shape(5)), t(x)], ignore: [2, 4]) { b, v in
                b.convolutionBackward(v[3], x: v[0], weight: v[1], conv, workspace: v[2], scratch: v[4], dWeight: v[5], dBias: v[6], dx: v[7])
            },
            Case(name: "attentionForward", tensors: [t(Shape(2, 5, 36)), t(Shape(2, 3, 5, 5)), t(Shape(2, 3, 5, 5)), t(Shape(2, 5, 12))]) { b, v in
                b.attentionForward(qkv: v[0], heads: 3, scale: 0.5, scores: v[1], probs: v[2], merged: v[3])
            },
            Case(name: "attentionProbabilities", tensors: [t(Shape(2, 5, 36)), t(Shape(2, 3, 5, 5)), t(Shape(2, 3, 5, 5))]) { b, v in
                b.attentionProbabilities(qkv: v[0], heads: 3, scale: 0.5, scores: v[1], probs: v[2])
            },
            Case(name: "attentionBackward", tensors: [t(Shape(2, 5, 12)), t(Shape(2, 5, 36)), t(Shape(2, 3, 5, 5), .unit), t(Shape(2, 3, 5, 5)),
                                                      t(Shape(2, 3, 5, 5)), t(Shape(2, 5, 36))]) { b, v in
                b.attentionBackward(dMerged: v[0], qkv: v[1], probs: v[2], heads: 3, scale: 0.5, dProbs: v[3], dScores: v[4], dQKV: v[5])
            },
            // The probabilities recomputed first (tensor 2 is written, not read).
            Case(name: "attentionBackward/recompute", tensors: [t(Shape(2, 5, 12)), t(Shape(2, 5, 36)), t(Shape(2, 3, 5, 5)), t(Shape(2, 3, 5, 5)),
                                                                t(Shape(2, 3, 5, 5)), t(Shape(2, 5, 36))]) { b, v in
                b.attentionBackward(dMerged: v[0], qkv: v[1], probs: v[2], heads: 3, scale: 0.5, dProbs: v[3], dScores: v[4], dQKV: v[5],
                                    recompute: true)
            },
            // bf16 qkv, merged and dQKV (under bf16 activations): the outputs written by the
            // products as bf16, compared as fp32 (merged: tensor 3; dQKV: tensor 5).
            Case(name: "attentionForward/bf16", tensors: [t(Shape(2, 5, 36)), t(Shape(2, 3, 5, 5)), t(Shape(2, 3, 5, 5)), t(Shape(2, 5, 12))],
                 rtol: 1e-2, atol: 1e-4) { b, v in
                withBFloat16(b, v[0]) { qkv in
                    withBFloat16(b, v[3]) { merged in
                        b.attentionForward(qkv: qkv, heads: 3, scale: 0.5, scores: v[1], probs: v[2], merged: merged)
                        b.convert(merged, into: v[3])
                    }
                }
            },
            Case(name: "attentionBackward/bf16", tensors: [t(Shape(2, 5, 12)), t(Shape(2, 5, 36)), t(Shape(2, 3, 5, 5), .unit), t(Shape(2, 3, 5, 5)),
                                                           t(Shape(2, 3, 5, 5)), t(Shape(2, 5, 36))], rtol: 1e-2, atol: 1e-4) { b, v in
                withBFloat16(b, v[1]) { qkv in
                    withBFloat16(b, v[5]) { dQKV in
                        b.attentionBackward(dMerged: v[0], qkv: qkv, probs: v[2], heads: 3, scale: 0.5, dProbs: v[3], dScores: v[4], dQKV: dQKV)
                        b.convert(dQKV, into: v[5])
                    }
                }
            },
            Case(name: "globalAvgPoolForward", tensors: [t(Shape(2, 3, 4, 5)), t(Shape(2, 3))]) { b, v in b.globalAvgPoolForward(v[0], v[1]) },
            Case(name: "globalAvgPoolBackward", tensors: [t(Shape(2, 3)), t(Shape(2, 3, 4, 5))]) { b, v in b.globalAvgPoolBackward(v[0], v[1]) },
            Case(name: "tokenMeanMaxForward", tensors: [t(Shape(2, 5, 7)), t(Shape(2, 7)), t(Shape(2, 7)), t(Shape(2, 7))]) { b, v in
                b.tokenMeanMaxForward(v[0], mean: v[1], max: v[2], argmax: v[3])
            },
            Case(name: "tokenMeanMaxBackward", tensors: [t(Shape(2, 7)), t(Shape(2, 7)), t(Shape(2, 7), .indices(5)), t(Shape(2, 5, 7))]) { b, v in
                b.tokenMeanMaxBackward(dMean: v[0], dMax: v[1], argmax: v[2], v[3])
            },
            Case(name: "transposeLastTwo", tensors: [t(Shape(2, 3, 5)), t(Shape(2, 5, 3))]) { b, v in b.transposeLastTwo(v[0], v[1]) },
            Case(name: "copyColumns", tensors: [t(Shape(4, 3)), t(Shape(4, 7))]) { b, v in
                b.copyColumns(v[0], srcCols: 3, into: v[1], dstCols: 7, offset: 2)
            },
            Case(name: "sliceColumns", tensors: [t(Shape(4, 7)), t(Shape(4, 3))]) { b, v in
                b.sliceColumns(v[0], srcCols: 7, offset: 2, into: v[1], dstCols: 3)
            },
            Case(name: "gruGatesForward", tensors: [t(Shape(3, 15)), t(Shape(3, 15)), t(Shape(3, 5)), t(Shape(3, 5)), t(Shape(3, 5)),
                                                    t(Shape(3, 5)), t(Shape(3, 5))]) { b, v in
                b.gruGatesForward(gi: v[0], gh: v[1], h: v[2], hNew: v[3], r: v[4], z: v[5], n: v[6])
            },
            Case(name: "gruGatesBackward", tensors: [t(Shape(3, 5)), t(Shape(3, 15)), t(Shape(3, 5)), t(Shape(3, 5), .unit), t(Shape(3, 5), .unit),
                                                     t(Shape(3, 5)), t(Shape(3, 15)), t(Shape(3, 15)), t(Shape(3, 5))]) { b, v in
                b.gruGatesBackward(dhNew: v[0], gh: v[1], h: v[2], r: v[3], z: v[4], n: v[5], dgi: v[6], dgh: v[7], dh: v[8])
            },
            Case(name: "queryKeyScores", tensors: [t(Shape(2, e)), t(Shape(2, tk, e)), t(Shape(2, h, tk))]) { b, v in
                b.queryKeyScores(q: v[0], k: v[1], tokens: tk, heads: h, scale: 0.5, v[2])
            },
            Case(name: "weightedValues", tensors: [t(Shape(2, h, tk), .unit), t(Shape(2, tk, e)), t(Shape(2, e))]) { b, v in
                b.weightedValues(v[0], v: v[1], tokens: tk, heads: h, v[2])
            },
            Case(name: "weightedValuesBackward", tensors: [t(Shape(2, e)), t(Shape(2, h, tk), .unit), t(Shape(2, tk, e)), t(Shape(2, h, tk)),
                                                           t(Shape(2, tk, e))]) { b, v in
                b.weightedValuesBackward(dCtx: v[0], w: v[1], v: v[2], tokens: tk, heads: h, dW: v[3], dV: v[4])
            },
            Case(name: "queryKeyScoresBackward", tensors: [t(Shape(2, h, tk)), t(Shape(2, e)), t(Shape(2, tk, e)), t(Shape(2, e)),
                                                           t(Shape(2, tk, e))]) { b, v in
                b.queryKeyScoresBackward(dScores: v[0], q: v[1], k: v[2], tokens: tk, heads: h, scale: 0.5, dQ: v[3], dK: v[4])
            },
            Case(name: "meanOverHeads", tensors: [t(Shape(2, h, tk)), t(Shape(2, tk))]) { b, v in b.meanOverHeads(v[0], heads: h, tokens: tk, v[1]) },
            Case(name: "smoothLabels", tensors: [t(Shape(6), .binary), t(Shape(6))]) { b, v in b.smoothLabels(v[0], smoothing: 0.1, v[1]) },
            Case(name: "binaryCrossEntropyWithLogits", tensors: [t(Shape(6)), t(Shape(6), .unit), t(Shape(6)), t(Shape(1))]) { b, v in
                b.binaryCrossEntropyWithLogits(v[0], targets: v[1], scale: 0.5, dLogits: v[2], loss: v[3], weight: 0.7)
            },
            Case(name: "cosineMarginPenalty", tensors: [t(Shape(4, 7)), t(Shape(4, 7)), t(Shape(4, 7)), t(Shape(4, 7)), t(Shape(1))]) { b, v in
                b.cosineMarginPenalty(v[0], v[1], margin: 0.1, scale: 0.5, da: v[2], db: v[3], loss: v[4], weight: 0.3)
            },
            Case(name: "axpy", tensors: [t(Shape(37)), t(Shape(37))]) { b, v in b.axpy(0.5, v[0], v[1]) },
            Case(name: "flagNonFinite", tensors: [t(Shape(37)), t(Shape(1))]) { b, v in
                b.flagNonFinite(v[0], into: v[1])
                b.upload([Float.infinity], into: v[0].slice(from: 5, Shape(1)))
                b.flagNonFinite(v[0], into: v[1])
            },
            // alphaOut is alpha broadcast to final's shape (it was declared Shape(1) here, and both
            // backends wrote five floats past it: found by AddressSanitizer).
            Case(name: "gatedFusionForward", tensors: [t(Shape(1)), t(Shape(6)), t(Shape(6)), t(Shape(6)), t(Shape(6)), t(Shape(6))]) { b, v in
                b.gatedFusionForward(gate: v[0], reasoning: v[1], external: v[2], final: v[3], prob: v[4], alphaOut: v[5])
            },
            Case(name: "gatedFusionBackward", tensors: [t(Shape(6)), t(Shape(1)), t(Shape(6)), t(Shape(6)), t(Shape(6)), t(Shape(6)), t(Shape(1))]) { b, v in
                b.gatedFusionBackward(dFinal: v[0], gate: v[1], reasoning: v[2], external: v[3], dReasoning: v[4], dExternal: v[5], dGate: v[6])
            },
            Case(name: "meanAbsSigmoidDifference", tensors: [t(Shape(6)), t(Shape(6)), t(Shape(1))]) { b, v in
                b.meanAbsSigmoidDifference(v[0], v[1], into: v[2])
            },
            Case(name: "clipGradientNorm", tensors: [t(Shape(70_001)), t(Shape(1), .zeros), t(Shape(1)), t(Shape(1))]) { b, v in
                b.clipGradientNorm(v[0], ranges: [0..<100, 150..<70_001], maxNorm: 1, nonFinite: v[1], norm: v[2], gate: v[3])
            },
            Case(name: "adamW", tensors: [t(Shape(301)), t(Shape(301)), t(Shape(301)), t(Shape(301), .positive), t(Shape(1), .constant(1))]) { b, v in
                b.adamW(params: v[0], grads: v[1], expAvg: v[2], expAvgSq: v[3], lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8,
                        weightDecay: 0.05, step: 3, gate: v[4])
            },
            Case(name: "scale", tensors: [t(Shape(37))]) { b, v in b.scale(v[0], by: 0.3) },
            Case(name: "grayscale", tensors: [t(Shape(2, 3, 6, 5)), t(Shape(2, 1, 6, 5))]) { b, v in b.grayscale(v[0], v[1]) },
            Case(name: "sobelMagnitude", tensors: [t(Shape(2, 1, 6, 5)), t(Shape(2, 1, 6, 5))]) { b, v in b.sobelMagnitude(v[0], v[1]) },
            Case(name: "resizeBilinear", tensors: [t(Shape(2, 1, 7, 9)), t(Shape(2, 1, 4, 5))]) { b, v in b.resizeBilinear(v[0], v[1]) },
            Case(name: "fftMagnitudeShifted", tensors: [t(Shape(2, 1, 8, 8)), t(Shape(2, 1, 8, 8))]) { b, v in b.fftMagnitudeShifted(v[0], v[1]) },
            Case(name: "highPassLogNormalize", tensors: [t(Shape(2, 1, 8, 8), .positive), t(Shape(8, 8), .unit), t(Shape(2, 1, 8, 8))]) { b, v in
                b.highPassLogNormalize(v[0], mask: v[1], v[2])
            },
            // bf16 tensors (activations only products read): made from fp32 ones on each backend.
            Case(name: "convert", tensors: [t(Shape(37)), t(Shape(37)), t(Shape(37))]) { b, v in
                withBFloat16(b, v[0]) { h in
                    b.convert(h, into: v[1])  // fp32 -> bf16 -> fp32: v[0] rounded to nearest even
                    b.convert(v[1], into: v[2])  // equal dtypes: a copy
                }
            },
            // The conversions take four elements per access where both sides are aligned (above: 36
            // so, one in the tail); views one element in go one by one (the first stays as it was).
            Case(name: "convertUnaligned", tensors: [t(Shape(38)), t(Shape(38)), t(Shape(38))]) { b, v in
                withBFloat16(b, Tensor(v[0].base + 1, Shape(37))) { h in
                    b.convert(h, into: Tensor(v[1].base + 1, Shape(37)))
                    let odd = Tensor(b.allocate(DType.bfloat16.floats(38)), Shape(38), dtype: .bfloat16)
                    b.convert(v[1], into: odd)
                    b.convert(Tensor(odd.base + 1, Shape(36), dtype: .bfloat16), into: Tensor(v[2].base + 1, Shape(36)))
                    b.release(odd.base)
                }
            },
            Case(name: "product", tensors: [t(Shape(5, 19)), t(Shape(7, 19)), t(Shape(5, 7)), t(Shape(19, 7))]) { b, v in
                withBFloat16(b, v[0]) { a in
                    b.product(transA: false, transB: true, m: 5, n: 7, k: 19, alpha: 0.75, a: a, lda: 19, b: v[1], ldb: 19, beta: 0.5,
                              c: v[2], ldc: 7)
                    b.product(transA: true, transB: false, m: 19, n: 7, k: 5, alpha: 1, a: a, lda: 19, b: v[2], ldb: 7, beta: 1,
                              c: v[3], ldc: 7)
                }
            },
            Case(name: "biasedProduct", tensors: [t(Shape(5, 19)), t(Shape(7, 19)), t(Shape(7)), t(Shape(5, 9)), t(Shape(19, 7))]) { b, v in
                withBFloat16(b, v[0]) { a in
                    // C with a leading dimension past n (columns 7 and 8 of each row must stay as they were).
                    b.biasedProduct(transA: false, transB: true, m: 5, n: 7, k: 19, alpha: 0.75, a: a, lda: 19, b: v[1], ldb: 19,
                                    bias: v[2], c: v[3], ldc: 9)
                    b.biasedProduct(transA: true, transB: false, m: 19, n: 7, k: 5, alpha: 1, a: v[0], lda: 19, b: v[3], ldb: 9,
                                    bias: v[2], c: v[4], ldc: 7)
                }
            },
            // A residual set in C with the bias (a residual block's sum): C with a leading
            // dimension past n (its columns 7 and 8 stay), then a residual that is C itself.
            Case(name: "biasedProduct/residual", tensors: [t(Shape(5, 19)), t(Shape(7, 19)), t(Shape(7)), t(Shape(5, 9)), t(Shape(5, 9))]) { b, v in
                withBFloat16(b, v[0]) { a in
                    b.biasedProduct(transA: false, transB: true, m: 5, n: 7, k: 19, alpha: 1, a: a, lda: 19, b: v[1], ldb: 19,
                                    bias: v[2], residual: v[3], c: v[4], ldc: 9)
                    b.biasedProduct(transA: false, transB: true, m: 5, n: 7, k: 19, alpha: 0.5, a: a, lda: 19, b: v[1], ldb: 19,
                                    bias: v[2], residual: v[3], c: v[3], ldc: 9)
                }
            },
            // A bf16 C (qkv's and fc1's outputs under bf16 activations), written by the product:
            // the bias rounded to bf16, the fp32 sum rounded once; compared as fp32 (tensor 3).
            // Where the device's fp32 sum differs from the CPU's in its last bits, the rounding may
            // go the other way: one bf16 step (2^-8 relative) is within rtol 1e-2.
            Case(name: "biasedProduct/bf16", tensors: [t(Shape(5, 19)), t(Shape(7, 19)), t(Shape(7)), t(Shape(5, 9)), t(Shape(5, 9))],
                 rtol: 1e-2, atol: 1e-4) { b, v in
                withBFloat16(b, v[0]) { a in
                    withBFloat16(b, v[3]) { c in  // columns 7 and 8 of each row stay as they were
                        b.biasedProduct(transA: false, transB: true, m: 5, n: 7, k: 19, alpha: 0.75, a: a, lda: 19, b: v[1], ldb: 19,
                                        bias: v[2], c: c, ldc: 9)
                        b.convert(c, into: v[4])
                        b.product(transA: false, transB: true, m: 5, n: 7, k: 19, alpha: 1, a: v[0], lda: 19, b: v[1], ldb: 19,
                                  beta: 0.5, c: c, ldc: 9)
                        b.convert(c, into: v[3])
                    }
                }
            },
            // Fused (flash) attention, bf16 qkv: N = 70 crosses a 64-row tile and is no multiple of
            // 16; heads of 16 and of 64 channels (the tiny and the full config). merged compared as
            // fp32 (tensor 1), then backward from it.
            fusedAttentionCase("fusedAttentionForward", batch: 2, tokens: 70, heads: 2, headDim: 16, backward: false),
            fusedAttentionCase("fusedAttentionBackward", batch: 2, tokens: 70, heads: 2, headDim: 16),
            fusedAttentionCase("fusedAttentionBackward/hd32", batch: 1, tokens: 33, heads: 1, headDim: 32),
            fusedAttentionCase("fusedAttentionBackward/hd64", batch: 1, tokens: 70, heads: 2, headDim: 64),
            fusedAttentionCase("fusedAttentionBackward/bf16", batch: 2, tokens: 70, heads: 2, headDim: 16, bf16Gradient: true),
            Case(name: "gemm", tensors: [t(Shape(5, 19)), t(Shape(7, 19)), t(Shape(5, 7))]) { b, v in
                b.gemm(transA: false, transB: true, m: 5, n: 7, k: 19, alpha: 0.75, a: v[0].base, lda: 19, b: v[1].base, ldb: 19, beta: 0.5,
                       c: v[2].base, ldc: 7)
            },
        ]
    }

    /// Forward then backward of the fused attention. Tensors: qkv, merged (fp32 view), logSumExp,
    /// dMerged, delta, dQKV. The CPU reference walks the keys as the device does (the same bf16
    /// roundings), so forward agrees to summation order; backward's bf16 dScores may round the
    /// other way where the recomputed probabilities differ in their last bits. rtol 1e-2 admits
    /// one bf16 ulp of merged (up to 2^-7 relative), which a GPU's tensor cores, summing in another
    /// order than the emulator, may move. delta (each row's dMerged . merged over the head's
    /// channels) and dQKV (sums over keys of dScores, both signs) cancel: a merged one ulp apart
    /// moved an H200's delta 1.6% off the CPU's where it summed to 0.29 from terms near 1 (and
    /// passed with other inputs), so they are compared normwise (`Case.normwise`).
    static func fusedAttentionCase(_ name: String, batch b: Int, tokens n: Int, heads h: Int, headDim hd: Int, backward: Bool = true,
                                   bf16Gradient: Bool = false) -> Case {
        let d = h * hd
        return Case(name: name, tensors: [(Shape(b, n, 3 * d), .normal), (Shape(b, n, d), .zeros), (Shape(b, h, n), .zeros),
                                          (Shape(b, n, d), .normal), (Shape(b, h, n), .zeros), (Shape(b, n, 3 * d), .zeros)],
                    rtol: 1e-2, atol: 5e-4, normwise: [4, 5]) { be, v in
            withBFloat16(be, v[0]) { qkv in
                let merged = Tensor(be.allocate(DType.bfloat16.floats(b * n * d)), Shape(b, n, d), dtype: .bfloat16)
                let scale = 1 / Float(hd).squareRoot()
                be.fusedAttentionForward(qkv: qkv, heads: h, scale: scale, merged: merged, logSumExp: v[2])
                be.convert(merged, into: v[1])
                // dMerged (tensor 3) as the kernels take it: bf16.
                if backward && bf16Gradient {  // dQKV written as bf16, compared through tensor 5
                    withBFloat16(be, v[3]) { dMerged in
                        withBFloat16(be, v[5]) { g in
                            be.fusedAttentionBackward(dMerged: dMerged, qkv: qkv, merged: merged, logSumExp: v[2], heads: h, scale: scale,
                                                      delta: v[4], dQKV: g)
                            be.convert(g, into: v[5])
                        }
                    }
                } else if backward {
                    withBFloat16(be, v[3]) { dMerged in
                        be.fusedAttentionBackward(dMerged: dMerged, qkv: qkv, merged: merged, logSumExp: v[2], heads: h, scale: scale,
                                                  delta: v[4], dQKV: v[5])
                    }
                }
                be.release(merged.base)
            }
        }
    }

    /// Runs `body` with a bf16 copy of `x` on `b`.
    static func withBFloat16(_ b: any Backend, _ x: Tensor, _ body: (Tensor) -> Void) {
        let h = Tensor(b.allocate(DType.bfloat16.floats(x.count)), x.shape, dtype: .bfloat16)
        b.convert(x, into: h)
        body(h)
        b.release(h.base)
    }

    /// The names of the kernels checked (one case each).
    public static var kernelNames: [String] { cases.map(\.name) }

    /// Runs every case on `device` and on the CPU backend; one result per case.
    /// Every case on `device` against `reference` (the CPU backend unless given), or only the
    /// cases `only` accepts.
    public static func run(on device: any Backend, reference: (any Backend)? = nil, seed: UInt64 = 1,
                           only: (String) -> Bool = { _ in true }) -> [Result] {
        let cpu = reference ?? CPUBackend(threads: 1)
        var results: [Result] = []
        for (ci, c) in cases.enumerated() where only(c.name) {
            var gen = Values(state: seed &+ UInt64(ci) &* 0x9e37_79b9)
            let values = c.tensors.map { gen.fill($0.0.count, $0.1) }
            func execute(_ b: any Backend) -> [[Float]] {
                let ts = zip(c.tensors, values).map { DeviceTensor(b, $0.0, $1) }
                c.run(b, ts.map(\.tensor))
                return withExtendedLifetime(ts) { ts.map { b.download($0.tensor) } }
            }
            let want = execute(cpu), got = execute(device)
            let d = disagreement(want: want, got: got, rtol: c.rtol, atol: c.atol, ignore: c.ignore, normwise: c.normwise)
            results.append(Result(kernel: c.name, worst: d.worst, maxAbsError: d.maxAbs, detail: d.detail))
        }
        return results
    }

    /// The largest error of `got` against `want` over its bound (atol + rtol |want|, or rtol times
    /// the tensor's largest |want| for the tensors in `normwise`; a case passes at 1 or less), the
    /// largest absolute error, and where the worst one is.
    public static func disagreement(want: [[Float]], got: [[Float]], rtol: Double, atol: Double, ignore: Set<Int> = [],
                                    normwise: Set<Int> = []) -> (worst: Double, maxAbs: Double, detail: String) {
        var worst = 0.0, maxAbs = 0.0, detail = ""
        for i in 0..<want.count where !ignore.contains(i) {
            let scale = normwise.contains(i) ? want[i].reduce(0) { max($0, abs(Double($1))) } : nil
            for (j, (w, g)) in zip(want[i], got[i]).enumerated() {
                let err = abs(Double(w) - Double(g))
                let bound = atol + rtol * (scale ?? abs(Double(w)))
                let ratio = w == g || (w.isNaN && g.isNaN) ? 0 : (err.isFinite ? err / bound : .infinity)
                maxAbs = max(maxAbs, err.isFinite ? err : 0)
                if ratio > worst { worst = ratio; detail = "tensor \(i) [\(j)]: device \(g), cpu \(w)" }
            }
        }
        return (worst, maxAbs, detail)
    }
}
