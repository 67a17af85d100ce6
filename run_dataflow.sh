#!/usr/bin/env bash
# run_dataflow.sh CONFIG [options]: the same pipeline as `pixelbeam run CONFIG`, on Dataflow.
# Settings come from environment variables; see --help and docs/dataflow.md.
set -euo pipefail  # bash 3.2 (macOS) and later

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  cat <<'EOF'
usage: run_dataflow.sh CONFIG [--dry_run] [--wait] [--template] [extra Beam or pixelbeam options]

Runs `python -m pixelbeam run CONFIG --runner DataflowRunner ...` with the project, region,
temp/staging locations, service account and worker packaging (--setup_file ./setup.py) set,
and a fixed pool of workers sized from the config's fetch limits (the Earth Engine quota), so
that the job as a whole cannot exceed them. Returns once the job is submitted, printing the
job id, its console page and `pixelbeam status OUT`: the job records its own completion
(OUT/runs/<run_id>.json, dataset.json), so the launcher may exit. --wait waits until the job
finishes and prints the summary, as a local run does.

Environment:
  PROJECT          Cloud project that runs the job (required)
  BUCKET           gs://BUCKET for temp and staging files (required); output.path in the
                   config must be gs://... too
  REGION           Dataflow region (default us-central1)
  SERVICE_ACCOUNT  worker service account email (default: the Compute Engine default
                   service account); it needs Earth Engine access for earthengine sources
  MACHINE_TYPE     worker machine type (default n1-standard-2); one SDK process per vCPU
  MAX_WORKERS      worker VMs (default: derived from fetch.max_concurrent_requests, about
                   8 request slots per SDK process); refused if some process would get none
  ONE_PROCESS_PER_WORKER=1   one SDK process per VM (--experiments=no_use_multiple_sdk_containers)
  SDK_CONTAINER_IMAGE        a worker image with the dependencies preinstalled (optional)
  JOB_NAME         Dataflow job name (default pixelbeam-CONFIGNAME-UTCTIME)
  TEMPLATE_FILE    --template: the Flex Template spec built from dataflow/ (default
                   $BUCKET/pixelbeam/templates/pixelbeam.json; docs/dataflow.md builds it)
  IMAGE            --template: the template's image, also run by the workers (optional:
                   the spec names it; given, it is passed as sdk_container_image)
  PYTHON           interpreter with pixelbeam[gcp,ee] installed (default .venv/bin/python)

Options:
  --dry_run        build and translate the job for DataflowRunner (--dry_run=True) without
                   submitting it or touching the output; skips the credential check
  --wait           wait for the job to finish and print the summary
  --template       launch the Flex Template instead (gcloud dataflow flex-template run): the
                   config is copied to $BUCKET/pixelbeam/configs/ and passed as `config`, the
                   derived worker options as parameters; with --dry_run, the template's entry
                   point (dataflow/main.py) translates the job here and prints the gcloud command
  -h, --help       this text
Anything else is passed on, after the derived options (so it wins): Beam options such as
--subnetwork=... --no_use_public_ips, or pixelbeam's --overwrite, --max_failed_fraction.
EOF
}

die() { echo "run_dataflow.sh: error: $*" >&2; exit 2; }

if [[ $# -eq 0 ]]; then usage >&2; exit 2; fi
case $1 in -h|--help) usage; exit 0;; -*) die "give the config first: run_dataflow.sh CONFIG [options]";; esac
CONFIG=$1; shift
[[ -f $CONFIG ]] || die "$CONFIG: no such config file"

DRY_RUN=0
TEMPLATE=0
EXTRA=()
for arg in "$@"; do
  case $arg in
    -h|--help) usage; exit 0;;
    --dry_run|--dry_run=True|--dry_run=true) DRY_RUN=1;;
    --template) TEMPLATE=1;;
    *) EXTRA+=("$arg");;
  esac
done

if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $HERE/.venv/bin/python ]]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
PROJECT=${PROJECT:-}
BUCKET=${BUCKET:-}
REGION=${REGION:-us-central1}
MACHINE_TYPE=${MACHINE_TYPE:-n1-standard-2}
[[ -n $PROJECT ]] || die "PROJECT is not set: export PROJECT=your-cloud-project"
[[ $PROJECT =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] || die "PROJECT: '$PROJECT' is not a Cloud project id (6-30 of a-z, 0-9, -)"
[[ -n $BUCKET ]] || die "BUCKET is not set: export BUCKET=gs://your-bucket (for temp and staging files)"
BUCKET=${BUCKET%/}
[[ $BUCKET == gs://* ]] || BUCKET=gs://$BUCKET
[[ $BUCKET =~ ^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]$ ]] || die "BUCKET: '$BUCKET' is not a bucket name (gs://NAME, no folder)"
if [[ -n ${MAX_WORKERS:-} && ! $MAX_WORKERS =~ ^[1-9][0-9]*$ ]]; then die "MAX_WORKERS: '$MAX_WORKERS' is not a positive whole number"; fi

if [[ $DRY_RUN == 0 ]]; then  # the launcher submits the job, stages files and reads/writes the output
  if [[ -n ${GOOGLE_APPLICATION_CREDENTIALS:-} ]]; then
    [[ -r $GOOGLE_APPLICATION_CREDENTIALS ]] || die "GOOGLE_APPLICATION_CREDENTIALS: '$GOOGLE_APPLICATION_CREDENTIALS' is not a readable key file"
  elif ! command -v gcloud >/dev/null 2>&1 || ! gcloud auth application-default print-access-token >/dev/null 2>&1; then
    die "no Google credentials: run 'gcloud auth application-default login' (or set GOOGLE_APPLICATION_CREDENTIALS to a key file)"
  fi
fi

REQUIREMENTS=$(mktemp "${TMPDIR:-/tmp}/pixelbeam-worker-requirements.XXXXXX")
trap 'rm -f "$REQUIREMENTS"' EXIT
HELPER=(-m pixelbeam.pipeline.dataflow worker-options "$CONFIG" --machine_type "$MACHINE_TYPE" --requirements_file "$REQUIREMENTS")
[[ -n ${MAX_WORKERS:-} ]] && HELPER+=(--max_workers "$MAX_WORKERS")
[[ ${ONE_PROCESS_PER_WORKER:-0} == 1 ]] && HELPER+=(--one_process_per_worker)
[[ -n ${SERVICE_ACCOUNT:-} ]] && HELPER+=(--service_account "$SERVICE_ACCOUNT")
DERIVED_TEXT=$(PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "${HELPER[@]}") || exit $?
DERIVED=()
while IFS= read -r line; do if [[ -n $line ]]; then DERIVED+=("$line"); fi; done <<<"$DERIVED_TEXT"

if [[ -z ${JOB_NAME:-} ]]; then
  name=$(basename "$CONFIG"); name=${name%.*}
  name=$(tr '[:upper:]' '[:lower:]' <<<"$name" | tr -c 'a-z0-9\n' '-')
  JOB_NAME="pixelbeam-${name}-$(date -u +%Y%m%d-%H%M%S)"
fi

if [[ $TEMPLATE == 1 ]]; then  # the Flex Template (dataflow/): parameters as its metadata.json declares them
  TEMPLATE_FILE=${TEMPLATE_FILE:-$BUCKET/pixelbeam/templates/pixelbeam.json}
  CONFIG_URI="$BUCKET/pixelbeam/configs/$JOB_NAME.yaml"
  PARAMS=("config=$CONFIG_URI")
  GCLOUD_EXTRA=()
  for opt in "${DERIVED[@]}"; do
    case $opt in
      --machine_type=*|--num_workers=*|--max_num_workers=*|--autoscaling_algorithm=*) opt=${opt#--}; PARAMS+=("$opt");;
      --experiments=*) GCLOUD_EXTRA+=("--additional-experiments=${opt#--experiments=}");;
      --requirements_file=*|--requirements_cache=*) ;;  # the image has pixelbeam[gcp,ee] installed
    esac
  done
  [[ -n ${IMAGE:-} ]] && PARAMS+=("sdk_container_image=$IMAGE")
  for arg in ${EXTRA[@]+"${EXTRA[@]}"}; do
    case $arg in
      --overwrite) PARAMS+=("overwrite=true");;
      --max_failed_fraction=*) PARAMS+=("max_failed_fraction=${arg#--max_failed_fraction=}");;
      --wait) die "--wait: a Flex Template's launcher returns once the job is submitted; follow it with: pixelbeam status OUTPUT";;
      *) GCLOUD_EXTRA+=("$arg");;
    esac
  done
  joined=$(IFS='~'; echo "${PARAMS[*]}")
  RUN=(gcloud dataflow flex-template run "$JOB_NAME" --project "$PROJECT" --region "$REGION"
       --template-file-gcs-location "$TEMPLATE_FILE"
       --temp-location "$BUCKET/pixelbeam/temp" --staging-location "$BUCKET/pixelbeam/staging"
       --parameters "^~^$joined")  # ^~^: gcloud's escape for values holding commas
  [[ -n ${SERVICE_ACCOUNT:-} ]] && RUN+=(--service-account-email "$SERVICE_ACCOUNT")
  RUN+=(${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"})
  if [[ $DRY_RUN == 1 ]]; then  # the template's entry point translates the job here; nothing is sent
    ENTRY=("$PYTHON" "$HERE/dataflow/main.py" "--config=$CONFIG" --runner=DataflowRunner
           --project "$PROJECT" --region "$REGION" --temp_location "$BUCKET/pixelbeam/temp" --dry_run=True
           "${DERIVED[@]}")
    echo "run_dataflow.sh: ${ENTRY[*]}" >&2
    PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "${ENTRY[@]}"
    echo "run_dataflow.sh: would run: gcloud storage cp $CONFIG $CONFIG_URI && ${RUN[*]}"
    exit 0
  fi
  gcloud storage cp "$CONFIG" "$CONFIG_URI" --project "$PROJECT" >&2
  echo "run_dataflow.sh: ${RUN[*]}" >&2
  "${RUN[@]}"
  OUT=$(PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c 'import sys; from pixelbeam.pipeline.config import load_config; print(load_config(sys.argv[1]).output.path)' "$CONFIG")
  echo "run_dataflow.sh: the job records its own completion; progress: pixelbeam status $OUT"
  exit 0
fi

CMD=("$PYTHON" -m pixelbeam run "$CONFIG"
     --runner DataflowRunner
     --project "$PROJECT" --region "$REGION"
     --temp_location "$BUCKET/pixelbeam/temp" --staging_location "$BUCKET/pixelbeam/staging"
     --job_name "$JOB_NAME"
     --setup_file "$HERE/setup.py"
     "${DERIVED[@]}")
[[ -n ${SERVICE_ACCOUNT:-} ]] && CMD+=(--service_account_email "$SERVICE_ACCOUNT")
[[ -n ${SDK_CONTAINER_IMAGE:-} ]] && CMD+=(--sdk_container_image "$SDK_CONTAINER_IMAGE")
[[ $DRY_RUN == 1 ]] && CMD+=(--dry_run=True)
CMD+=(${EXTRA[@]+"${EXTRA[@]}"})  # (bash 3.2, macOS: an empty array is "unbound")

echo "run_dataflow.sh: ${CMD[*]}" >&2
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "${CMD[@]}"
