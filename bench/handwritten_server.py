"""The baseline: an inference server as a user would write it by hand.

FastAPI + uvicorn + onnxruntime, written the obvious way (this is deliberately *not*
optimised; it is what the agent is compared against): a pydantic model for the Open Inference
Protocol v2 request body, `np.array(data, dtype=np.float32).reshape(shape)`, `session.run`
in a plain `def` endpoint (FastAPI runs it in its threadpool), and the OIP response as a dict.

Every `*.onnx` in $MODEL_DIR is served under its file name without the extension. Run it the
way a user would, with uvicorn's defaults (one worker; uvloop and httptools are picked
automatically when installed; access log on):

    MODEL_DIR=models uvicorn handwritten_server:app --app-dir bench --host 127.0.0.1 --port 8000

(No `main()` here: bench/run_all.py runs only the scripts that define one.)
"""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
}

sessions = {
    path.stem: ort.InferenceSession(str(path))
    for path in sorted(Path(os.environ.get("MODEL_DIR", "models")).glob("*.onnx"))
}

app = FastAPI()


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput]


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


@app.post("/v2/models/{model_name}/infer")
def infer(model_name: str, request: InferRequest):
    session = sessions.get(model_name)
    if session is None:
        raise HTTPException(status_code=404, detail=f"unknown model {model_name}")
    feeds = {
        inp.name: np.array(inp.data, dtype=np.float32).reshape(inp.shape) for inp in request.inputs
    }
    results = session.run(None, feeds)
    outputs = []
    for meta, value in zip(session.get_outputs(), results, strict=True):
        outputs.append(
            {
                "name": meta.name,
                "datatype": DATATYPES.get(meta.type, "FP32"),
                "shape": list(value.shape),
                "data": value.flatten().tolist(),
            }
        )
    response = {"model_name": model_name, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    return response
