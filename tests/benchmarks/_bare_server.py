"""The baseline of ``serve_overhead``: a bare FastAPI + transformers server for one exported model.

    .venv/bin/python -m tests.benchmarks._bare_server --model-dir DIR --port 8001 --threads 1 --temperature 1.7

``POST /predict {"texts": [...]}`` returns ``{"predictions": [{"label", "scores"}]}`` after the same
work as an attune replica: tokenize (truncated to the manifest's ``max_seq_len``), BERT forward,
mean pooling over the attention mask, the linear head, temperature softmax (the pure functions of
attune's artifact contract, ``registry.mean_pool`` and ``registry.scores``). One inference runs at
a time (as one batch runs at a time in an attune replica), with ``torch.set_num_threads(--threads)``.
No auth, no registry, no batching, no Ray. ``GET /healthz`` reports the torch thread count.
``POST /echo`` takes the same body and only counts its texts (no model): the HTTP cost alone.
"""
from __future__ import annotations

import argparse
import threading
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoTokenizer, BertForSequenceClassification

from registry import max_seq_len, mean_pool, read_manifest, scores


class Body(BaseModel):
    texts: list[str]


def build_app(model_dir: Path, temperature: float) -> FastAPI:
    length = max_seq_len(read_manifest(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertForSequenceClassification.from_pretrained(str(model_dir)).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/predict")
    def predict(body: Body) -> dict:
        with lock, torch.no_grad():
            enc = tokenizer(body.texts, truncation=True, padding=True, max_length=length, return_tensors="pt")
            hidden = model.bert(**enc).last_hidden_state
            logits = model.classifier(mean_pool(hidden, enc["attention_mask"])).numpy()
        return {"predictions": [scores(row, labels, temperature) for row in logits]}

    @app.post("/echo")
    def echo(body: Body) -> dict:
        return {"texts": len(body.texts)}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "torch_threads": torch.get_num_threads()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(build_app(args.model_dir, args.temperature), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
