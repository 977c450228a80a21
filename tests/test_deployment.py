"""The replica's IOBinding path (what a GPU replica runs), exercised on the CPU against plain ``run``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.deployment import io_binding_runner


def test_io_binding_gives_what_plain_run_gives(demo_repository: Path, dataset: np.ndarray) -> None:
    session = ort.InferenceSession(str(demo_repository / "breast-cancer" / "2" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert io_binding_runner(session, names, "cpu") is None  # plain run on the CPU unless forced
    run = io_binding_runner(session, names, "cpu", force=True)
    assert run is not None
    for rows in (1, 7, 200):
        batch = dataset[:rows]
        expected = dict(zip(names, session.run(names, {"features": batch}), strict=True))
        got = run({"features": batch[::1]})
        assert set(got) == set(names)
        for name in names:
            np.testing.assert_array_equal(got[name], expected[name])
    strided = dataset[:20:2]  # not contiguous: the binding must copy it, not read past it
    np.testing.assert_array_equal(run({"features": strided})[names[0]],
                                  session.run(names, {"features": np.ascontiguousarray(strided)})[0])
