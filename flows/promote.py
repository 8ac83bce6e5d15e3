"""Promotion with a person's approval, inside Prefect: show the comparison, pause, decide.

    promote-model(model_name, version): comparison artifact -> PendingManualApproval -> pause
        -> approve: @champion moves to the version (Approved, who/when/why recorded)
        -> reject:  the version is Rejected, no alias moves
        -> no answer within `timeout_seconds`: stays PendingManualApproval; the run logs it and
           ends Failed ("The flow was paused and never resumed.": Prefect's server fails an expired pause)

The pause carries a typed form (Prefect run input): the Prefect UI shows a **Resume** button on
the paused flow run that opens it (decision, reason, your name). Answer from code with
`prefect.flow_runs.resume_flow_run(flow_run_id, run_input={"decision": "approve", "reason": "..."})`.

Deployed from prefect.yaml as `promote-model/approval`; the credit-default pipeline starts it when a
challenger wins (`request_promotion=True`). Run it by hand:
`python flows/promote.py --model-name credit_defaults_model --version 3`.
"""

import argparse
import json
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field
from typing_extensions import Annotated

from prefect_ml._util import slugify
from prefect_ml.runtime import promotion


class ApprovalDecision(RunInput):
    """The form a reviewer fills in on the paused flow run."""

    decision: Literal["approve", "reject"] = Field(description="approve: move the alias to this version; "
                                                               "reject: tag it Rejected, nothing moves")
    reason: str = Field(default="", description="Why (recorded on the model version)")
    reviewer: str = Field(default="", description="Your name (recorded as who decided)")


def _describe(name: str, version: int, alias: str) -> str:
    comparison = promotion.comparison_of(name, version)
    try:
        current = promotion.resolve(name, alias)
    except promotion.PromotionError:
        current = None
    head = f"## Promote `{name}` version {version} to @{alias}?\n\n"
    head += f"Current @{alias}: {'none' if current is None else f'version {current}'}.\n\n"
    if comparison is None:
        return head + "_This version was registered without a comparison with the champion._\n"
    return head + comparison.markdown()


@flow(name="promote-model", log_prints=True)
def promote_model(
    model_name: Annotated[str, Field(min_length=1, description="Registered model name")],
    version: Annotated[int, Field(ge=1, description="The version to promote (the challenger)")],
    alias: Annotated[str, Field(min_length=1, description="The alias to move on approval")] = "champion",
    timeout_seconds: Annotated[int, Field(ge=1, le=7 * 86400, description="How long to wait for a decision")] = 3600,
) -> dict:
    """Ask a person to approve `version` as `model_name@alias`; record the decision in the registry."""
    logger = get_run_logger()
    ctx = get_run_context()
    run_id = str(ctx.flow_run.id) if getattr(ctx, "flow_run", None) else "?"
    via = f"prefect flow run {run_id}"
    text = _describe(model_name, version, alias)  # also checks that the model and version exist
    create_markdown_artifact(key=f"promotion-{slugify(model_name)}", markdown=text,
                             description=f"{model_name} v{version} -> @{alias}: waiting for a decision")
    promotion.mark_pending(model_name, version, via=via)
    logger.info(f"{model_name} version {version} is {promotion.PENDING}: waiting up to {timeout_seconds} s "
                "for a decision (Resume on this flow run in the Prefect UI)")
    form = ApprovalDecision.with_initial_data(
        description=text + "\n\n**Approve** moves the alias to this version; **reject** tags it Rejected.",
        decision="approve")
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_seconds, key="approval")
    except FlowPauseTimeout:
        # Prefect's server fails a run whose pause expired ("The flow was paused and never resumed."),
        # whatever the flow does next: say here, in the logs and the artifact, what that means.
        msg = (f"no decision within {timeout_seconds} s: {model_name} version {version} stays "
               f"{promotion.PENDING}; @{alias} did not move. Decide later with "
               f"`prefect-ml model promote {model_name} {version}` or run this flow again.")
        logger.warning(msg)
        create_markdown_artifact(key=f"promotion-{slugify(model_name)}", markdown=f"### Timed out\n\n{msg}",
                                 description=f"{model_name} v{version}: no decision ({promotion.PENDING})")
        return {"name": model_name, "version": version, "status": promotion.PENDING, "decision": "timeout"}
    by = answer.reviewer or "prefect-ui"
    if answer.decision == "approve":
        info = promotion.promote(model_name, version, alias=alias, by=by, reason=answer.reason, via=via)
        msg = f"approved by {by}: @{alias} moved from version {info['previous']} to {version}"
    else:
        info = promotion.reject(model_name, version, by=by, reason=answer.reason, via=via)
        msg = f"rejected by {by}: {model_name} version {version} is {promotion.REJECTED}; @{alias} did not move"
    logger.info(msg + (f" ({answer.reason})" if answer.reason else ""))
    create_markdown_artifact(key=f"promotion-{slugify(model_name)}", markdown=f"### Decision\n\n{msg}\n\n"
                             f"reason: {answer.reason or '-'}", description=f"{model_name} v{version}: {msg}")
    return {**info, "decision": answer.decision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--timeout-seconds", type=int, default=3600)
    args = parser.parse_args()
    out = promote_model(model_name=args.model_name, version=args.version, alias=args.alias,
                        timeout_seconds=args.timeout_seconds)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
