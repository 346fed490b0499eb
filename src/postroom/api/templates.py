"""``/v1/templates``: store template versions, read them, and preview a render."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from postroom.api.auth import ClientDep, require_api_key
from postroom.api.errors import ERROR_RESPONSES, KEYED_RESPONSES
from postroom.api.schemas import (
    RenderedOut,
    RenderRequest,
    TemplateIn,
    TemplateList,
    TemplateOut,
)
from postroom.errors import TemplateNotFound
from postroom.templates import Template

router = APIRouter(
    prefix="/v1/templates",
    tags=["templates"],
    dependencies=[Depends(require_api_key)],
    responses=KEYED_RESPONSES,
)

TemplateName = Annotated[str, Path(description="The template's name.")]
LocaleQuery = Annotated[
    str | None,
    Query(
        max_length=35,
        description="e.g. `fr-CA`; falls back to `fr`, then the default variant.",
    ),
]


def template_out(template: Template) -> TemplateOut:
    """The API view of a template row."""
    return TemplateOut(
        id=template.id,
        name=template.name,
        locale=template.locale,
        version=template.version,
        subject=template.subject,
        text=template.text,
        html=template.html,
        created_at=template.created_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=TemplateOut,
    summary="Store a new version of a template",
    responses={
        200: {
            "model": TemplateOut,
            "description": "Unchanged: the latest version already says this",
        },
        422: ERROR_RESPONSES[422],
    },
)
def save_template(body: TemplateIn, response: Response, client: ClientDep) -> TemplateOut:
    """Store the parts as the next version of the template in this locale.

    Answers **201** with the new version, or **200** with the latest version when it has the
    same subject, text and HTML (nothing is stored: saving is safe to repeat). Every part is
    compiled first; a syntax error is a **422** naming the template, version and line. Messages
    already stored keep the version they were rendered from.
    """
    try:
        previous: Template | None = client.get_template(body.name, locale=body.locale or None)
    except TemplateNotFound:
        previous = None
    saved = client.save_template(
        body.name, subject=body.subject, text=body.text, html=body.html, locale=body.locale
    )
    # Saving unchanged parts returns the latest row itself; any other row is a new version
    # (``previous`` may also be a fallback locale's row, which is never the one saved).
    if previous is not None and saved.id == previous.id:
        response.status_code = 200
    return template_out(saved)


@router.get("", response_model=TemplateList, summary="List templates")
def list_templates(client: ClientDep) -> TemplateList:
    """The latest version of every template in every locale, by name then locale."""
    return TemplateList(items=[template_out(row) for row in client.list_templates()])


@router.get(
    "/{name}",
    response_model=TemplateOut,
    summary="Get a template version",
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
def get_template(
    name: TemplateName,
    client: ClientDep,
    locale: LocaleQuery = None,
    version: Annotated[
        int | None, Query(ge=1, description="A stored version; the newest when absent.")
    ] = None,
) -> TemplateOut:
    """The version a message sent with this name and locale would use (or `version`).

    The locale falls back as when sending: `fr-CA`, then `fr`, then the default variant; the
    answer's `locale` says which one was found. **404** if none matches.
    """
    return template_out(client.get_template(name, locale=locale, version=version))


@router.get(
    "/{name}/versions",
    response_model=TemplateList,
    summary="List every version of a template",
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
def list_template_versions(
    name: TemplateName,
    client: ClientDep,
    locale: Annotated[
        str,
        Query(max_length=35, description="Exactly this variant (no fallback); default variant."),
    ] = "",
) -> TemplateList:
    """Every version of the template in exactly this locale, oldest first.

    **404** if the template has no version in this locale.
    """
    versions = client.list_template_versions(name, locale=locale)
    if not versions:
        raise TemplateNotFound(name, locale=locale)
    return TemplateList(items=[template_out(row) for row in versions])


@router.post(
    "/{name}/render",
    response_model=RenderedOut,
    summary="Preview a template rendered with a context",
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
def render_template(name: TemplateName, body: RenderRequest, client: ClientDep) -> RenderedOut:
    """Render the template as a message would carry it; nothing is stored or sent.

    The answer names the version and locale used (with fallback, as when sending), the subject,
    the text part (derived from the HTML when the template has none) and the HTML with its CSS
    inlined. **404** if no version matches; **422** naming the template, version and line if
    rendering fails.
    """
    template, rendered = client.render_template(
        name, body.context, locale=body.locale, version=body.version
    )
    return RenderedOut(
        template=template.name,
        locale=template.locale,
        version=template.version,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
    )
