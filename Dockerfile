# One image for every service; the command chooses which one runs:
#   codelab-gateway | codelab-runtime | codelab-llmproxy | codelab-auth
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True
# glibc gives each thread (gRPC's, one per pooled SQLite connection) a malloc
# arena of its own, up to 8 per core, and keeps what each ever held: the
# runtime's RSS grew by that in the soak (scripts/bench-mesh --soak).
ENV MALLOC_ARENA_MAX=2
# gRPC's client channels on the poller its servers use, not the EventEngine
# endpoint (an experiment in the pinned grpcio): a streamed message costs the
# reading side about half the CPU. These three are mesh/process.py's ENVIRONMENT.
ENV GRPC_EXPERIMENTS=-event_engine_client
# No gRPC fork() handlers: the runtime forks only to exec (MCP stdio servers),
# and the handlers could cost such a child its pipes (grpc/grpc#37710).
ENV GRPC_ENABLE_FORK_SUPPORT=false
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY mesh ./mesh
COPY gateway ./gateway
COPY runtime ./runtime
COPY llmproxy ./llmproxy
COPY auth ./auth
COPY ide ./ide
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 codelab
USER codelab
CMD ["codelab-gateway"]
