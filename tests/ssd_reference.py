"""The SSD recurrence itself, one token at a time in float64: the reference the scan's tests compare with."""
import torch


def recurrence(x, dt, A, B, C, h0=None):
    """state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T;  y_t = state_t C_t (heads of a group share B, C).

    Starts from ``h0`` (zeros by default). Returns y, or (y, final state) when ``h0`` is given.
    """
    b, seqlen, h, p = x.shape
    g, n = B.shape[-2:]
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    B, C = B.repeat_interleave(h // g, dim=2), C.repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, p, n) if h0 is None else h0.double().clone()
    ys = []
    for t in range(seqlen):
        state = torch.exp(dt[:, t] * A)[..., None, None] * state
        state = state + dt[:, t][..., None, None] * x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(ys, dim=1)
    return y if h0 is None else (y, state)
