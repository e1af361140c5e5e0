// The site's own script, served with every page (website/make_site.py); it loads nothing. A click on a figure (or
// Enter on its link) shows it at its full size, or as large as the window allows; a click or Escape closes it.
"use strict";

const FIGURES = ".jupyter-wrapper .jp-RenderedImage img, .md-typeset img.zoomable";

function enlarge(figure) {
  const box = document.createElement("div");
  box.className = "lightbox";
  box.setAttribute("role", "dialog");
  box.setAttribute("aria-label", figure.alt || "figure");
  const large = document.createElement("img");
  large.src = figure.src;
  large.alt = figure.alt;
  box.append(large);
  box.addEventListener("click", () => box.remove());
  document.body.append(box);
}

document.addEventListener("click", (event) => {
  const figure = event.target.closest(FIGURES) || event.target.closest("a")?.querySelector(FIGURES);
  if (figure) {
    event.preventDefault(); // a figure linked to its file (the home page's) opens here instead
    enlarge(figure);
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    document.querySelectorAll(".lightbox").forEach((box) => box.remove());
  }
});
