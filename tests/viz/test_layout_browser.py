"""Every dashboard panel laid out in real headless Chromium at two widths: no clipped or overlapping
titles, no trace hidden under an identical one.

The page is the synthetic run's dashboard (every panel, with the main job's long metric names). A
test-only script, injected into a copy of the page, measures the DOM once plotly has drawn: for each
figure, the bounding boxes of its title, subplot titles, axis titles, colour-bar titles, legend and
plot areas; a text outside the figure is clipped, two title boxes (or a title and a plot area or the
legend) that intersect overlap. It also compares the data of the traces drawn on the same axes. The
report is written into the page as JSON and read from Chromium's `--dump-dom`.
Like the other browser test, it skips without Chromium locally and fails without it under CI=true.
"""

from __future__ import annotations

import json
import re

import pytest
from _viz_synthetic import make_synthetic_run
from test_dashboard_browser import _chromium, _instrumented, _run

from introspect_mech.viz import export_dashboard

WIDTHS = (760, 1400)

LAYOUT_JS = """
window.addEventListener('load',function(){setTimeout(function(){
 var rep={figures:0, clipped:[], overlaps:[], hidden:[]};
 function box(el){var r=el.getBoundingClientRect(); return {l:r.left,t:r.top,r:r.right,b:r.bottom,w:r.width,h:r.height};}
 function inter(a,b){var w=Math.min(a.r,b.r)-Math.max(a.l,b.l), h=Math.min(a.b,b.b)-Math.max(a.t,b.t);
   return (w>1 && h>1) ? w*h : 0;}
 function txt(el){return (el.textContent||'').trim().slice(0,60);}
 document.querySelectorAll('.plotly-graph-div').forEach(function(gd){
  rep.figures++;
  var id=gd.id, fb=box(gd), items=[];
  function add(sel, kind){gd.querySelectorAll(sel).forEach(function(el){
    var b=box(el); if(b.w>0 && b.h>0 && txt(el)){items.push({kind:kind, text:txt(el), b:b});}});}
  add('.gtitle','title'); add('.g-xtitle text, [class^="g-x"][class$="title"] text','x-axis title');
  add('.g-ytitle text, [class^="g-y"][class$="title"] text','y-axis title');
  add('.annotation-text','subplot title'); add('.cbtitle text','colour-bar title');
  items.forEach(function(it){var b=it.b;
    if(b.l<fb.l-1 || b.r>fb.r+1 || b.t<fb.t-1 || b.b>fb.b+1){rep.clipped.push(id+': '+it.kind+' "'+it.text+'" '+JSON.stringify([Math.round(b.l),Math.round(b.t),Math.round(b.r),Math.round(b.b)])+' outside '+JSON.stringify([Math.round(fb.l),Math.round(fb.t),Math.round(fb.r),Math.round(fb.b)]));}});
  var areas=[]; gd.querySelectorAll('.draglayer .nsewdrag').forEach(function(el){areas.push({kind:'plot area', text:'', b:box(el)});});
  var leg=gd.querySelector('.legend .bg'); var legend=leg?{kind:'legend', text:'', b:box(leg)}:null;
  if(legend && (legend.b.b>fb.b+1 || legend.b.t<fb.t-1)){rep.clipped.push(id+': legend');}
  var others=areas.concat(legend?[legend]:[]);
  for(var i=0;i<items.length;i++){
   for(var j=i+1;j<items.length;j++){ if(inter(items[i].b,items[j].b)>0){
     rep.overlaps.push(id+': '+items[i].kind+' "'+items[i].text+'" / '+items[j].kind+' "'+items[j].text+'"');}}
   if(items[i].kind==='colour-bar title'){continue;}
   others.forEach(function(o){ if(inter(items[i].b,o.b)>0){
     rep.overlaps.push(id+': '+items[i].kind+' "'+items[i].text+'" / '+o.kind);}});
  }
  var seen={};
  (gd._fullData||[]).forEach(function(t){
   if(t.visible!==true || !t.x || !t.y){return;}
   if(t.type==='bar' && gd._fullLayout.barmode!=='overlay'){return;}  // grouped / stacked bars do not cover each other
   var key=[t.type,t.xaxis,t.yaxis,JSON.stringify(Array.from(t.x)),JSON.stringify(Array.from(t.y))].join('|');
   if(seen[key]!==undefined){rep.hidden.push(id+': "'+t.name+'" drawn exactly over "'+seen[key]+'"');}
   else{seen[key]=t.name;}
  });
 });
 var pre=document.createElement('pre'); pre.id='layout-report'; pre.textContent=JSON.stringify(rep);
 document.body.appendChild(pre);
},500);});
"""


def _layout_report(browser, tmp_path, url: str, width: int) -> dict:
    dom = _run(browser, tmp_path, f"--window-size={width},1600", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<pre id="layout-report">(.*?)</pre>', dom.stdout, re.S)
    assert m, "the layout script did not run"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    html = export_dashboard(make_synthetic_run(tmp / "run"), tmp / "dashboard.html")
    url = _instrumented(html, tmp / "dashboard_checked.html",
                        lambda t: t.replace("</head>", f"<script>{LAYOUT_JS}</script></head>", 1))
    return tmp, url


@pytest.mark.parametrize("width", WIDTHS)
def test_every_panel_lays_out_cleanly(page, width):
    browser = _chromium()
    tmp, url = page
    rep = _layout_report(browser, tmp, url, width)
    assert rep["figures"] >= 16, rep
    assert not rep["clipped"], f"clipped at {width} px: {rep['clipped']}"
    assert not rep["overlaps"], f"overlapping at {width} px: {rep['overlaps']}"
    assert not rep["hidden"], f"hidden traces at {width} px: {rep['hidden']}"


def test_the_layout_check_can_fail(tmp_path):
    """A figure with a long unwrapped axis title, a title pushed onto the plot and two identical
    traces (the style bypassed) is reported on all three counts."""
    import plotly.graph_objects as go

    browser = _chromium()
    fig = go.Figure([go.Scatter(x=[0, 1], y=[1, 2], name="a"), go.Scatter(x=[0, 1], y=[1, 2], name="b")])
    fig.update_layout(title=dict(text="a title on the plot", y=0.5, yref="paper"), height=300,
                      margin=dict(l=20, r=10, t=10, b=20),
                      yaxis_title="a very long y axis title that cannot fit beside a plot of three hundred pixels")
    html = tmp_path / "bad.html"
    html.write_text(fig.to_html(include_plotlyjs=True, div_id="fig-bad"), encoding="utf-8")
    url = _instrumented(html, tmp_path / "bad_checked.html",
                        lambda t: t.replace("</head>", f"<script>{LAYOUT_JS}</script></head>", 1))
    rep = _layout_report(browser, tmp_path, url, WIDTHS[0])
    assert rep["figures"] == 1
    assert any("y-axis title" in c for c in rep["clipped"]), rep
    assert any("title" in o and "plot area" in o for o in rep["overlaps"]), rep
    assert rep["hidden"] == ['fig-bad: "b" drawn exactly over "a"'], rep
