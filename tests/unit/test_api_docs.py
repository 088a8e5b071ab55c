"""The API guide (docs/api.md) is generated from schema.graphql and must be regenerated with it."""

from __future__ import annotations

from graph import apidoc


def test_the_committed_guide_is_what_the_committed_schema_gives():
    assert apidoc.GUIDE.read_text() == apidoc.render(apidoc.SCHEMA.read_text()), "run `make schema`"


def test_the_guide_lists_every_operation_with_its_arguments_and_description():
    sdl = '''
    """Ask things."""
    type Query {
      """One widget, or null."""
      widget(id: ID!, first: Int = 20): Widget
    }
    """A thing."""
    type Widget @key(fields: "id") { id: ID! """Its name.""" name: String! }
    enum Colour { """Like the sky.""" BLUE RED }
    input WidgetInput { name: String! = "w" }
    '''
    text = apidoc.render(sdl)
    assert "- `widget(id: ID!, first: Int = 20): Widget`: One widget, or null." in text
    assert '### `type Widget` @key(fields: "id")' in text and "- `name: String!`: Its name." in text
    assert "- `BLUE`: Like the sky." in text and "- `RED`" in text
    assert '- `name: String! = "w"`' in text
    assert text.index("## Operations") < text.index("## Object types") < text.index("## Input types")


def test_check_mode_reports_a_stale_guide(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "api.md"
    stale.write_text("old\n")
    monkeypatch.setattr(apidoc, "GUIDE", stale)
    monkeypatch.setattr(apidoc, "ROOT", tmp_path)
    assert apidoc.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert apidoc.main([]) == 0 and apidoc.main(["--check"]) == 0
