"""Runs in build/client-venv (tritonclient, no project code): what a standard Open Inference
Protocol client sees of our inference service. Prints one JSON object; writes the output."""

import json
import sys

import numpy as np
import tritonclient.grpc as triton

url, model, input_path, output_path = sys.argv[1:5]
client = triton.InferenceServerClient(url=url)
metadata = client.get_model_metadata(model, as_json=True)
config = client.get_model_config(model, as_json=True)
image = np.load(input_path)
tensor = triton.InferInput(metadata["inputs"][0]["name"], list(image.shape), "FP32")
tensor.set_data_from_numpy(image)
result = client.infer(model, [tensor],
                      outputs=[triton.InferRequestedOutput(metadata["outputs"][0]["name"])])
output = result.as_numpy(metadata["outputs"][0]["name"])
np.save(output_path, output)
statistics = client.get_inference_statistics(model, as_json=True)
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "missing_ready": client.is_model_ready("no-such-model"),
    "server": client.get_server_metadata(as_json=True),
    "metadata": metadata,
    "config": config,
    "statistics": statistics,
}))
