"""What each caller of the scorer may do: a team submits for itself and sees its own jobs;
organisers (and the internal caller, i.e. batch shards) see every job, set MOS values and
report shard results. Leaderboards are public to every authenticated caller."""

from __future__ import annotations

from services.common.auth import Principal, Role, require_role
from services.core.errors import NotFound, PermissionDenied
from services.scorer.jobs import Job

STAFF = (Role.ORGANISER, Role.INTERNAL)


def submitting_team(principal: Principal, requested: str) -> str:
    """The team a submission belongs to: a team token's own (the request may repeat it)."""
    if not principal.is_team:
        return requested
    if requested and requested != principal.name:
        raise PermissionDenied(
            f"this token belongs to team {principal.name!r}; it cannot submit for team "
            f"{requested!r}")
    return principal.name


def visible_team(principal: Principal, requested: str) -> str:
    """The team whose jobs a listing shows ("" = all teams, for organisers only)."""
    return submitting_team(principal, requested)


def check_visible(principal: Principal, job: Job) -> Job:
    """The job, if this caller may see it; another team's job does not exist for a team."""
    if principal.is_team and job.spec.team != principal.name:
        raise NotFound(f"no job with id {job.job_id!r}")  # the store's own words
    return job


def check_staff(principal: Principal, action: str) -> None:
    require_role(principal, STAFF, action)
