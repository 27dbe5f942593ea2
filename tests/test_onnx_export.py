"""torch.onnx.export of dcn_torch layers produces ONNX DeformConv (opset 19)
that onnxruntime runs with the same numbers."""
import numpy as np
import pytest
import torch

import dcn_torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class OffsetsAndDeform(torch.nn.Module):
    """The usual DCNv2 block: offsets and mask predicted by plain convs."""

    def __init__(self, cin, cout, k, stride, padding, dilation, groups, offset_groups, use_mask, bias):
        super().__init__()
        kk = k[0] * k[1]
        self.use_mask = use_mask
        self.off = torch.nn.Conv2d(cin, 2 * offset_groups * kk, k, stride, padding, dilation)
        self.msk = torch.nn.Conv2d(cin, offset_groups * kk, k, stride, padding, dilation)
        self.dcn = dcn_torch.DeformConv2d(cin, cout, k, stride, padding, dilation, groups, bias)

    def forward(self, x):
        offset = self.off(x) * 3.0
        mask = torch.sigmoid(self.msk(x)) if self.use_mask else None
        return self.dcn(x, offset, mask)


CONFIGS = [
    dict(cin=4, cout=6, k=(3, 3), stride=1, padding=1, dilation=1, groups=1, offset_groups=1, use_mask=True, bias=True),
    dict(cin=6, cout=4, k=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2, offset_groups=3, use_mask=True, bias=False),
    dict(cin=4, cout=4, k=(1, 1), stride=1, padding=0, dilation=1, groups=1, offset_groups=2, use_mask=False, bias=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["3x3_mask_bias", "odd_groups", "1x1_v1"])
def test_export_runs_in_onnxruntime(cfg, tmp_path):
    torch.manual_seed(0)
    model = OffsetsAndDeform(**cfg).eval()
    x = torch.randn(2, cfg["cin"], 11, 9)
    path = str(tmp_path / "dcn.onnx")
    torch.onnx.export(model, (x,), path, opset_version=19)

    import onnx

    graph = onnx.load(path).graph
    assert any(n.op_type == "DeformConv" for n in graph.node)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    want = model(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
