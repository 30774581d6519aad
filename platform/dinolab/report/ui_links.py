"""Where to look in the MLflow UI: the runs page of each experiment holding dinolab trials and each grid's
parent run, as URLs of the UI served at ``base_url`` (``dinolab ui`` prints them before it starts the UI).

MLflow's single-page app routes ``#/experiments/<id>/runs`` (the runs table) and
``#/experiments/<id>/runs/<run id>`` (a run). An experiment without the ``mlflow.experimentKind`` tag
is tagged ``custom_model_development`` so that the UI opens it in its model-training view.
"""

from __future__ import annotations

from dinolab.track import contract


def ui_links(tracking_uri: str, base_url: str, mark_kind: bool = True) -> list[tuple[str, str]]:
    """[(what, URL)]: per experiment with dinolab runs its runs page, then its grids' parent runs."""
    from dinolab.sweep import store

    if not store.store_exists(tracking_uri):
        return []
    client = store.open_client(tracking_uri)
    base = base_url.rstrip("/")
    out: list[tuple[str, str]] = []
    for exp_id in store.active_experiment_ids(client):
        parents = store.parent_runs(client, [exp_id])
        trials = client.search_runs([exp_id], f"tags.`{contract.TRIAL_ID}` IS NOT NULL", max_results=1)
        if not parents and not trials:
            continue
        exp = client.get_experiment(exp_id)
        if mark_kind and contract.MLFLOW_EXPERIMENT_KIND not in (exp.tags or {}):
            client.set_experiment_tag(exp_id, contract.MLFLOW_EXPERIMENT_KIND, contract.EXPERIMENT_KIND_TRAINING)
        out.append((f"experiment {exp.name}: runs", f"{base}/#/experiments/{exp_id}/runs"))
        for grid, p in sorted(parents.items()):
            out.append((f"grid {grid}: parent run ({p.status})", f"{base}/#/experiments/{exp_id}/runs/{p.run_id}"))
    return out


def print_ui_links(tracking_uri: str, host: str, port: int, stream=None) -> None:
    import sys

    stream = stream or sys.stderr
    shown = f"[{host}]" if ":" in host else host
    links = ui_links(tracking_uri, f"http://{shown}:{port}")
    if not links:
        print("dinolab: no dinolab runs in this store yet (dinolab run / dinolab sweep record them)", file=stream)
    for what, url in links:
        print(f"dinolab: {what}: {url}", file=stream)
