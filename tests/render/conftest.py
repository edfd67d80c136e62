import pytest

from tests.render.fake_run import copy_fake_run, make_fake_run


@pytest.fixture(scope="session")
def fake_run_template(tmp_path_factory):
    return make_fake_run(tmp_path_factory.mktemp("fake-run"))


@pytest.fixture
def fake_run(fake_run_template, tmp_path):
    return copy_fake_run(fake_run_template, tmp_path)
