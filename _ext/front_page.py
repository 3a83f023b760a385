"""The front page (``intro.md``) is a notebook only so that its status block is computed from the
records at build time. It is nothing to re-run, and has no paired ``.ipynb``: its "launch in
Colab" button would open ``intro.md``, which Colab cannot run. This drops that button there."""


def drop_launch_buttons(app, pagename, templatename, context, doctree):
    if pagename == app.config.root_doc:
        buttons = context.get("header_buttons", [])
        context["header_buttons"] = [b for b in buttons if b.get("label") != "launch-buttons"]


def setup(app):
    # after sphinx-book-theme's add_launch_buttons (priority 501) has added them
    app.connect("html-page-context", drop_launch_buttons, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
