"""`dossr serve`: one warm model behind an HTTP API and a web page (FastAPI, served by uvicorn)."""
