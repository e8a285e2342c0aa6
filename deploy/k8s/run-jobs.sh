#!/bin/sh
# Runs an overlay's one-off Jobs (bus init; the gpu overlay's models fetch too) for its
# current settings and images, after an install and after every upgrade:
#
#   deploy/k8s/run-jobs.sh OVERLAY [TIMEOUT]        e.g. deploy/k8s/run-jobs.sh gpu 30m
#
# A Job's pod template is immutable, and these Jobs name the hash-suffixed ConfigMap
# and the image tags, so an apply after a change of either would fail ("field is
# immutable"). Instead this deletes the previous run (finished or not: both Jobs are
# idempotent), applies overlays/OVERLAY/jobs afresh and waits until every Job has
# completed. It touches only objects labelled app.kubernetes.io/component=init, plus
# the ConfigMap those Jobs read (the same one the always-applied overlay makes).
set -eu

overlay=${1:?usage: run-jobs.sh OVERLAY [TIMEOUT]   (OVERLAY: dev or gpu)}
timeout=${2:-30m}
selector=app.kubernetes.io/component=init
dir=$(dirname "$0")/overlays/$overlay/jobs
if [ ! -f "$dir/kustomization.yaml" ]; then
    echo "run-jobs.sh: no overlay '$overlay' (no $dir/kustomization.yaml)" >&2
    exit 2
fi

rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
kubectl kustomize "$dir" >"$rendered"

kubectl delete -f "$rendered" --selector "$selector" --ignore-not-found --wait=true
kubectl apply -f "$rendered"
kubectl wait -f "$rendered" --selector "$selector" --for=condition=complete --timeout="$timeout"
