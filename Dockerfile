# The service image: API (`serve`) or worker (`worker`), configured by environment.
# Installed as a wheel (not editable): tests/e2e/test_wheel_install.py installs the project the
# same way, into a fresh venv outside the repository, and runs migrate, serve and worker from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv
COPY pyproject.toml setup.py MANIFEST.in README.md alembic.ini ./
COPY app ./app
COPY db ./db
COPY jobs ./jobs
# The trusted documents: setup.py copies them into the package (app/api/trusted_documents/).
COPY graphql ./graphql
RUN pip install --no-cache-dir . \
    && rm -rf /srv/app /srv/db /srv/jobs /srv/graphql /srv/build \
    && useradd --system --uid 10001 service
USER 10001
EXPOSE 8000
CMD ["conversation-service", "serve", "--host", "0.0.0.0", "--port", "8000"]
