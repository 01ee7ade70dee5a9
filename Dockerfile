# The service image: API (`serve`) or worker (`worker`), configured by environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY db ./db
COPY jobs ./jobs
RUN pip install . && useradd --system --uid 10001 service
USER service
EXPOSE 8000
CMD ["conversation-service", "serve", "--host", "0.0.0.0", "--port", "8000"]
