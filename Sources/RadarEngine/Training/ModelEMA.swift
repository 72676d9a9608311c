/// An exponential moving average of the model's weights (timm's `--model-ema`, ModelEmaV2):
/// after every optimizer step that ran, ema = decay * ema + (1 - decay) * weights, for the
/// parameters and for the BatchNorm buffers (running statistics) alike; the step counters are
/// the model's. Validation, the best checkpoint and the test use the average, which often
/// generalises better than the last weights. Held on the device beside the model: two
/// kernel launches per flat buffer (`scale`, `axpy`) per step, no host read.
public final class ModelEMA {
    public let decay: Float
    /// The averaged weights, laid out as the model's.
    public let store: ParameterStore

    /// Starts from the model's weights as they are.
    public init(decay: Float, like params: ParameterStore) {
        self.decay = decay
        store = ParameterStore(layout: params.layout, backend: params.backend)
        copy(from: params)
    }

    /// After an optimizer step that ran.
    public func update(from params: ParameterStore) {
        let be = store.backend
        for (ema, now) in [(store.values, params.values), (store.buffers, params.buffers)] where ema.count > 0 {
            be.scale(ema, by: decay)
            be.axpy(1 - decay, now, ema)
        }
    }

    /// The average restarts from `params` (a run resumed from a checkpoint without one).
    public func copy(from params: ParameterStore) {
        store.backend.copy(params.values, into: store.values)
        if params.buffers.count > 0 { store.backend.copy(params.buffers, into: store.buffers) }
    }

    /// The model takes the averaged weights (to validate or test them); the counters stay.
    public func load(into params: ParameterStore) {
        store.backend.copy(store.values, into: params.values)
        if params.buffers.count > 0 { store.backend.copy(store.buffers, into: params.buffers) }
    }
}
