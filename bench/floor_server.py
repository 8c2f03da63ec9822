"""The floor: the cheapest answer the server stack can give.

A raw ASGI app (no framework) on the same stack as the other servers (uvicorn with uvloop
and httptools). It reads the request body, does nothing with it, and answers every request
with the same small JSON. No server that parses the body and runs a model can beat it, so
its req/s and latency bound what the agent could possibly reach on this machine.

    uvicorn floor_server:app --app-dir bench --host 127.0.0.1 --port 8000 --no-access-log

(No `main()` here: bench/run_all.py runs only the scripts that define one.)
"""

BODY = b'{"model_name":"floor","outputs":[]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:  # drain the request body, as any real server must
        message = await receive()
        more_body = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
