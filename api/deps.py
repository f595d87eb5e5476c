"""Route dependencies as `Annotated` aliases; tests replace them via `dependency_overrides`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.folders import SessionLauncher, launch_session
from api.prefect_reader import PrefectReader
from api.search import PersonDirectory, PhotoDirectory, TextSearch
from photoindex.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_reader(request: Request) -> PrefectReader:
    """The app's one Prefect reader."""
    reader: PrefectReader = request.app.state.reader
    return reader


def get_launcher() -> SessionLauncher:
    """What starts a session: the flows' `submit_session`."""
    return launch_session


def get_search(request: Request) -> TextSearch:
    """The app's one text search (it keeps recent embeddings and the vector store open)."""
    search: TextSearch = request.app.state.search
    return search


def get_persons(settings: Annotated[Settings, Depends(get_settings_dep)]) -> PersonDirectory:
    """Persons and face crops."""
    return PersonDirectory(settings)


def get_photos(settings: Annotated[Settings, Depends(get_settings_dep)]) -> PhotoDirectory:
    """Thumbnails of indexed photos."""
    return PhotoDirectory(settings)


AppSettings = Annotated[Settings, Depends(get_settings_dep)]
Reader = Annotated[PrefectReader, Depends(get_reader)]
Launcher = Annotated[SessionLauncher, Depends(get_launcher)]
Search = Annotated[TextSearch, Depends(get_search)]
Persons = Annotated[PersonDirectory, Depends(get_persons)]
Photos = Annotated[PhotoDirectory, Depends(get_photos)]
