"""Real peers on 127.0.0.1 that tests and benchmarks both run: RTMP, RTMPS and SRT receivers, WebSocket and HTTP
servers, a TCP relay that can cut connections, livekit-server and its publishers. Each is started on a free port and
stopped by its PID."""
