"""Applications: which devices run which application, and operators' assignments by tag.

A model version belongs to one application (its card says which); a device runs one (its
config declares it, or an operator assigns it by tag). The planner, rollouts and the loop
offer a device only versions of its application.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from edgeloop.agent.protocol import NAME_PATTERN

from ... import registry
from ...auth import record_audit
from ...schemas import ApplicationAssign, ApplicationAssignmentPublic, ApplicationPublic
from ..deps import AUTH, FleetDep, Operator, Reader, problems

router = APIRouter(prefix="/api/v1", tags=["applications"])

ApplicationPath = Annotated[str, Path(pattern=NAME_PATTERN, description="an application name")]
TagPath = Annotated[str, Path(min_length=1, max_length=128, description="a device tag")]


@router.get("/applications", responses=problems(*AUTH))
def list_applications(fleet: FleetDep, reader: Reader) -> list[ApplicationPublic]:
    """Every application with its device count, live versions and assigned tags."""
    with fleet.sessions() as db:
        return registry.applications(db)


@router.get("/applications/assignments", responses=problems(*AUTH))
def list_assignments(fleet: FleetDep, reader: Reader) -> list[ApplicationAssignmentPublic]:
    """Operators' assignments: devices carrying the tag run the application."""
    with fleet.sessions() as db:
        return registry.application_assignments(db)


@router.post(
    "/applications/{application}/assignments",
    status_code=status.HTTP_201_CREATED,
    responses=problems(*AUTH),
)
def assign(
    application: ApplicationPath, body: ApplicationAssign, fleet: FleetDep, operator: Operator
) -> ApplicationAssignmentPublic:
    """Devices carrying ``tag`` run ``application`` from now on, whatever their config says
    (and devices that register with the tag later); they are re-planned at once."""
    devices = fleet.assign_application(body.tag, application)
    record_audit(
        fleet.sessions,
        operator,
        "application.assign",
        application,
        {"tag": body.tag, "devices": devices},
    )
    return ApplicationAssignmentPublic(tag=body.tag, application=application, devices=devices)


@router.delete("/applications/assignments/{tag}", responses=problems(*AUTH, 404))
def unassign(tag: TagPath, fleet: FleetDep, operator: Operator) -> ApplicationAssignmentPublic:
    """Drop the assignment of ``tag``: its devices go back to what their config declares.
    Answers the assignment that was dropped."""
    try:
        application, devices = fleet.unassign_application(tag)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    record_audit(fleet.sessions, operator, "application.unassign", tag, {"devices": devices})
    return ApplicationAssignmentPublic(tag=tag, application=application, devices=devices)
