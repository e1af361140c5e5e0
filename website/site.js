// The site's own script, served with every page (website/make_site.py); it loads nothing. A click on a figure (or
// Enter on its link) shows it at its full size, or as large as the window allows; a click or Escape closes it. On the
// home page's frontier (website/frontier.py), pointing at a method's point reads it out under the plot, and the
// method's button hides or shows it.
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

function readOut(event) {
  const point = event.target.closest?.(".frontier g.method");
  if (point) {
    point.closest(".frontier").querySelector(".frontier-readout").textContent = point.dataset.readout;
  }
}

function toggle(button) {
  const shown = button.getAttribute("aria-pressed") !== "true";
  button.setAttribute("aria-pressed", String(shown));
  const method = CSS.escape(button.dataset.method);
  button.closest(".frontier").querySelectorAll(`svg [data-method="${method}"]`) // its point and its intervals
    .forEach((drawn) => drawn.classList.toggle("hidden", !shown));
}

document.addEventListener("mouseover", readOut);
document.addEventListener("focusin", readOut);

document.addEventListener("click", (event) => {
  const figure = event.target.closest(FIGURES) || event.target.closest("a")?.querySelector(FIGURES);
  if (figure) {
    event.preventDefault(); // a figure linked to its file (the home page's) opens here instead
    enlarge(figure);
  }
  const button = event.target.closest(".frontier-toggle");
  if (button) {
    toggle(button);
  }
  readOut(event); // a tap on a point
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    document.querySelectorAll(".lightbox").forEach((box) => box.remove());
  }
});
