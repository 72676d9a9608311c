"""RADAR in PyTorch, exactly as ../shared/design/MODEL.md fixes it (the reference our Swift model is
checked against). The encoder is timm's VisionTransformer (vit_small_patch16_224's architecture
with the config's sizes), so state_dict names are timm's under `encoder.`.
"""
import math

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                evidence_dim=64, reasoning_iterations=3, reasoning_heads=4, fft_size=112, dropout=0.1,
                branch_dropout=0.1, gating_init=0.5, use_badm=True, use_aadm=True,
                mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def full_config(cfg):
    out = dict(DEFAULTS)
    out.update(cfg)
    return out


def grayscale(x):
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def sobel(gray):
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=gray.dtype, device=gray.device).view(1, 1, 3, 3)
    ky = kx.transpose(2, 3).contiguous()
    edge = torch.sqrt(F.conv2d(gray, kx, padding=1) ** 2 + F.conv2d(gray, ky, padding=1) ** 2)
    peak = edge.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return torch.where(peak > 1e-8, edge / peak.clamp_min(1e-8), edge)


def high_pass_spectrum(gray, size):
    r = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)
    mag = torch.fft.fftshift(torch.fft.fft2(r), dim=(-2, -1)).abs()
    c = size // 2
    yy, xx = torch.meshgrid(torch.arange(size, dtype=gray.dtype, device=gray.device),
                            torch.arange(size, dtype=gray.dtype, device=gray.device), indexing="ij")
    mask = torch.sigmoid((torch.sqrt((yy - c) ** 2 + (xx - c) ** 2) - size / 8) / 10)
    m = torch.log1p(mag * mask)
    lo = m.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
    hi = m.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return (m - lo) / (hi - lo).clamp_min(1e-8)


def artifact_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 32, 7, 4, 3), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 5, 2, 2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1))


class BADM(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, e, p = c["embed_dim"], c["evidence_dim"], c["branch_dropout"]
        self.edge_encoder = artifact_cnn()
        self.patch_processor = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Dropout(p), nn.Linear(d, d // 2), nn.ReLU())
        self.fusion = nn.Sequential(nn.Linear(128 + d // 2, 2 * e), nn.ReLU(), nn.Dropout(p), nn.Linear(2 * e, e))
        self.classifier = nn.Linear(e, 1)

    def forward(self, x, patches):
        edge = self.edge_encoder(sobel(grayscale(x))).flatten(1)
        pooled = torch.cat([patches.mean(dim=1), patches.max(dim=1)[0]], dim=1)
        ev = self.fusion(torch.cat([edge, self.patch_processor(pooled)], dim=1))
        return ev, self.classifier(ev)


class AADM(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, e, p = c["embed_dim"], c["evidence_dim"], c["branch_dropout"]
        self.fft_size = c["fft_size"]
        self.freq_encoder = artifact_cnn()
        self.cls_processor = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Dropout(p))
        self.fusion = nn.Sequential(nn.Linear(128 + d // 2, 2 * e), nn.ReLU(), nn.Dropout(p), nn.Linear(2 * e, e))
        self.classifier = nn.Linear(e, 1)

    def forward(self, x, cls):
        freq = self.freq_encoder(high_pass_spectrum(grayscale(x), self.fft_size)).flatten(1)
        ev = self.fusion(torch.cat([freq, self.cls_processor(cls)], dim=1))
        return ev, self.classifier(ev)


class CrossAttention(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h, s):
        b, t, e = s.shape
        q = self.q_proj(h).view(b, self.heads, self.head_dim)
        k = self.k_proj(s).view(b, t, self.heads, self.head_dim)
        v = self.v_proj(s).view(b, t, self.heads, self.head_dim)
        w = torch.softmax(torch.einsum("bhd,bthd->bht", q, k) * self.scale, dim=-1)
        w = self.dropout(w)
        ctx = torch.einsum("bht,bthd->bhd", w, v).reshape(b, e)
        return self.out_proj(ctx), w.mean(dim=1)


class ERM(nn.Module):
    def __init__(self, c):
        super().__init__()
        e = c["evidence_dim"]
        self.iterations = c["reasoning_iterations"]
        self.init_proj_dual = nn.Sequential(nn.Linear(2 * e, e), nn.ReLU())
        self.init_proj_single = nn.Sequential(nn.Linear(e, e), nn.ReLU())
        self.attention = CrossAttention(e, c["reasoning_heads"], c["dropout"])
        self.gru = nn.GRUCell(e, e)
        self.predictor = nn.Linear(e, 1)

    def forward(self, tokens, init_input, dual, history_column):
        b, t, _ = tokens.shape
        h = (self.init_proj_dual if dual else self.init_proj_single)(init_input)
        logits, history = [], []
        for _ in range(self.iterations):
            ctx, w = self.attention(h, tokens)
            h = self.gru(ctx, h)
            logits.append(self.predictor(h))
            if t == 2:
                history.append(w)
            else:
                full = torch.zeros(b, 2, dtype=w.dtype, device=w.device)
                full[:, history_column] = w[:, 0]
                history.append(full)
        return torch.cat(logits, dim=1), torch.stack(history, dim=1)


class RADAR(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = full_config(cfg)
        self.c = c
        g = c["gating_init"]
        self._gating_logit = nn.Parameter(torch.tensor(math.log(g / (1 - g)), dtype=torch.float32))
        self.encoder = timm.models.vision_transformer.VisionTransformer(
            img_size=c["img_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
            num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], num_classes=0, qkv_bias=True)
        self.badm = BADM(c)
        self.aadm = AADM(c)
        self.reasoning = ERM(c)
        e, p = c["evidence_dim"], c["dropout"]
        self.external_classifier_dual = nn.Sequential(nn.Linear(2 * e, e), nn.ReLU(), nn.Dropout(p), nn.Linear(e, 1))
        self.external_classifier_single = nn.Sequential(nn.Linear(e, e // 2), nn.ReLU(), nn.Dropout(p), nn.Linear(e // 2, 1))

    def forward(self, x):
        c = self.c
        tokens = self.encoder.forward_features(x)
        cls, patches = tokens[:, 0], tokens[:, 1:]
        b, e = x.shape[0], c["evidence_dim"]
        zeros_e, zeros_l = torch.zeros(b, e, dtype=x.dtype, device=x.device), torch.zeros(b, 1, dtype=x.dtype, device=x.device)
        eb, lb = self.badm(x, patches) if c["use_badm"] else (zeros_e, zeros_l)
        ea, la = self.aadm(x, cls) if c["use_aadm"] else (zeros_e, zeros_l)
        dual = c["use_badm"] and c["use_aadm"]
        if dual:
            init_input = torch.cat([eb, ea], dim=1)
            ev_tokens = torch.stack([eb, ea], dim=1)
        else:
            init_input = eb if c["use_badm"] else ea
            ev_tokens = init_input.unsqueeze(1)
        iteration_logits, history = self.reasoning(ev_tokens, init_input, dual, 0 if c["use_badm"] else 1)
        reasoning_logit = iteration_logits[:, -1:]
        external = (self.external_classifier_dual if dual else self.external_classifier_single)(init_input)
        alpha = torch.sigmoid(self._gating_logit)
        logit = alpha * reasoning_logit + (1 - alpha) * external
        t = iteration_logits.shape[1]
        delta = (torch.sigmoid(iteration_logits[:, -1]) - torch.sigmoid(iteration_logits[:, -2])).abs().mean() if t >= 2 \
            else torch.zeros((), dtype=x.dtype, device=x.device)
        return dict(logit=logit, prob=torch.sigmoid(logit), reasoning_logit=reasoning_logit, external_logit=external,
                    gating_alpha=alpha.expand_as(logit), badm_logit=lb, aadm_logit=la, badm_evidence=eb,
                    aadm_evidence=ea, iteration_logits=iteration_logits, attention_history=history,
                    convergence_delta=delta)


def radar_loss(out, labels, c):
    """The five terms of MODEL.md section 6 (labels (B) in {0, 1})."""
    c = full_config(c)
    t = (labels * 0.9 + 0.05).unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits
    main = bce(out["logit"], t)
    dual = c["use_badm"] and c["use_aadm"]
    if dual:
        branch = 0.5 * (bce(out["badm_logit"], t) + bce(out["aadm_logit"], t))
        eb, ea = out["badm_evidence"], out["aadm_evidence"]
        nb, na = eb.norm(dim=1, keepdim=True), ea.norm(dim=1, keepdim=True)
        if bool((nb > 1e-6).all()) and bool((na > 1e-6).all()):
            cos = ((eb / (nb + 1e-8)) * (ea / (na + 1e-8))).sum(dim=1)
            orth = F.relu(cos.abs() - 0.1).mean()
        else:
            orth = torch.zeros((), dtype=main.dtype, device=main.device)
    else:
        branch = bce(out["badm_logit"] if c["use_badm"] else out["aadm_logit"], t)
        orth = torch.zeros((), dtype=main.dtype, device=main.device)
    it = out["iteration_logits"]
    n = it.shape[1]
    w = torch.linspace(1.0 / n, 1.0, n, dtype=main.dtype, device=main.device)
    w = w / w.sum()
    deep = sum(w[i] * bce(it[:, i:i + 1], t) for i in range(n))
    total = 1.0 * main + 0.3 * branch + 0.1 * orth + 0.05 * deep
    return dict(main=main, branch=branch, orth=orth, deep=deep, total=total)
