extension CPUBackend {
    // col row index = (c * k + ky) * k + kx, column index = oy * Wo + ox (PyTorch's weight order).
    public func im2col(_ x: UnsafePointer<Float>, channels: Int, height: Int, width: Int, kernel: Int,
                       stride: Int, padding: Int, _ col: UnsafeMutablePointer<Float>) {
        let ho = (height + 2 * padding - kernel) / stride + 1
        let wo = (width + 2 * padding - kernel) / stride + 1
        for c in 0..<channels {
            let plane = x + c * height * width
            for ky in 0..<kernel {
                for kx in 0..<kernel {
                    let row = col + ((c * kernel + ky) * kernel + kx) * ho * wo
                    for oy in 0..<ho {
                        let iy = oy * stride - padding + ky
                        let dst = row + oy * wo
                        if iy < 0 || iy >= height {
                            for ox in 0..<wo { dst[ox] = 0 }
                            continue
                        }
                        let src = plane + iy * width
                        for ox in 0..<wo {
                            let ix = ox * stride - padding + kx
                            dst[ox] = (ix >= 0 && ix < width) ? src[ix] : 0
                        }
                    }
                }
            }
        }
    }

    public func col2im(_ col: UnsafePointer<Float>, channels: Int, height: Int, width: Int, kernel: Int,
                       stride: Int, padding: Int, _ dx: UnsafeMutablePointer<Float>) {
        let ho = (height + 2 * padding - kernel) / stride + 1
        let wo = (width + 2 * padding - kernel) / stride + 1
        for c in 0..<channels {
            let plane = dx + c * height * width
            for ky in 0..<kernel {
                for kx in 0..<kernel {
                    let row = col + ((c * kernel + ky) * kernel + kx) * ho * wo
                    for oy in 0..<ho {
                        let iy = oy * stride - padding + ky
                        if iy < 0 || iy >= height { continue }
                        let src = row + oy * wo
                        let dst = plane + iy * width
                        for ox in 0..<wo {
                            let ix = ox * stride - padding + kx
                            if ix >= 0 && ix < width { dst[ix] += src[ox] }
                        }
                    }
                }
            }
        }
    }
}
