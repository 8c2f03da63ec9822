# One image for the console, its Celery worker and beat, and the node agent.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY console console
COPY billing billing
COPY fleet fleet
COPY inference inference
COPY templates templates
COPY manage.py ./
RUN pip install --no-cache-dir . \
 && DJANGO_DEBUG=true python manage.py collectstatic --noinput
RUN useradd --create-home outpost && mkdir -p /var/lib/outpost && chown outpost /var/lib/outpost
USER outpost
EXPOSE 8000 8001
