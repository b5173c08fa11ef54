"""`dlm serve`: the OpenAI-compatible server."""

from __future__ import annotations

from typing import Optional

import typer

from ..errors import InputError
from .common import app, check_at_least_one, device_option, dtype_option, load_model, model_option


@app.command()
def serve(
    model: str = model_option(),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default loopback only)."),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require Authorization: Bearer KEY on /v1/*."),
    max_batch: int = typer.Option(8, "--max-batch", help="Rows in the running batch."),
    max_queue: int = typer.Option(64, "--max-queue", help="Waiting requests before 429."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds a request may run."),
    name: Optional[str] = typer.Option(None, "--name", help="Model id in the API (default: --model)."),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
):
    """OpenAI-compatible server (completions, chat, streaming, /v1/dlm/denoise, /health, /metrics)."""
    try:
        import uvicorn

        from ..serve import create_app
    except ImportError:
        raise InputError("serve", "needs the serve extra: pip install 'dlm[serve]' (fastapi, uvicorn)") from None
    for flag, v in (("--max-batch", max_batch), ("--max-queue", max_queue), ("--port", port)):
        check_at_least_one(flag, v)
    lm = load_model(model, dtype, device)
    server = create_app(lm, model_name=name or model, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                        timeout=timeout)  # fmt: skip
    typer.echo(f"serving {name or model} on http://{host}:{port} (OpenAI API at /v1)", err=True)
    uvicorn.run(server, host=host, port=port, log_level="warning")
