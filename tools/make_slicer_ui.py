"""Generate KneePipeline/Resources/UI/KneePipeline.ui (Qt Designer XML) from a compact description.

Run: python tools/make_slicer_ui.py  (the .ui is committed; edit this script, or the .ui in Qt Designer).
"""
import os
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "KneePipeline", "Resources", "UI", "KneePipeline.ui")


def prop(name, kind, value):
    return '<property name="%s"><%s>%s</%s></property>' % (name, kind, escape(str(value)), kind)


def param(name):
    return '<property name="SlicerParameterName" stdset="0"><string>%s</string></property>' % name


def w(cls, name, *props):
    return '<widget class="%s" name="%s">%s</widget>' % (cls, name, "".join(props))


def combo(name, pname, items, tip):
    it = "".join('<item><property name="text"><string>%s</string></property></item>' % escape(i) for i in items)
    return '<widget class="QComboBox" name="%s">%s%s%s</widget>' % (name, param(pname), prop("toolTip", "string", tip), it)


def node_combo(name, pname, types, tip, none_enabled):
    return ('<widget class="qMRMLNodeComboBox" name="%s">%s%s'
            '<property name="nodeTypes"><stringlist>%s</stringlist></property>'
            '%s%s%s%s%s</widget>') % (
        name, param(pname), prop("toolTip", "string", tip),
        "".join("<string>%s</string>" % t for t in types),
        prop("showChildNodeTypes", "bool", "false"), prop("addEnabled", "bool", "false"),
        prop("removeEnabled", "bool", "false"), prop("noneEnabled", "bool", "true" if none_enabled else "false"),
        prop("renameEnabled", "bool", "false"))


def path_edit(name, pname, filters, tip):
    return '<widget class="ctkPathLineEdit" name="%s">%s%s<property name="filters"><set>%s</set></property></widget>' % (
        name, param(pname) if pname else "", prop("toolTip", "string", tip), filters)


def dspin(name, pname, lo, hi, step, val, dec, suffix, tip):
    return w("QDoubleSpinBox", name, param(pname), prop("minimum", "double", lo), prop("maximum", "double", hi),
             prop("singleStep", "double", step), prop("value", "double", val), prop("decimals", "number", dec),
             prop("suffix", "string", suffix), prop("toolTip", "string", tip))


def form(name, rows):
    items = []
    for i, (label, widget) in enumerate(rows):
        if label is None:
            items.append('<item row="%d" column="0" colspan="2">%s</item>' % (i, widget))
        else:
            items.append('<item row="%d" column="0"><widget class="QLabel" name="%sLabel%d">%s</widget></item>'
                         '<item row="%d" column="1">%s</item>' % (i, name, i, prop("text", "string", label), i, widget))
    return '<layout class="QFormLayout" name="%s">%s</layout>' % (name, "".join(items))


def collapsible(name, text, layout, collapsed=False):
    return '<widget class="ctkCollapsibleButton" name="%s">%s%s%s</widget>' % (
        name, prop("text", "string", text), prop("collapsed", "bool", "true" if collapsed else "false"), layout)


def hbox(name, widgets):
    return '<layout class="QHBoxLayout" name="%s">%s</layout>' % (name, "".join("<item>%s</item>" % x for x in widgets))


inputs = collapsible("inputsCollapsibleButton", "Inputs", form("inputsFormLayout", [
    ("Knee MRI:", node_combo("inputVolumeSelector", "inputVolume", ["vtkMRMLScalarVolumeNode"],
                             "The knee MRI to segment (3D sagittal DESS-like works best).", True)),
    ("Existing segmentation:", node_combo("inputLabelsSelector", "inputLabels",
                                          ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"],
                                          "Optional: skip segmentation and analyse this label map / segmentation.", True)),
    ("Label convention:", combo("labelConventionComboBox", "labelConvention", ["dosma", "pymskt"],
                                "Numbering of the existing label map (dosma = nnU-Net; pymskt). Segmentation nodes "
                                "are matched by segment name.")),
]))

settings = collapsible("settingsCollapsibleButton", "Analysis", form("settingsFormLayout", [
    ("Segmentation model:", '<widget class="QComboBox" name="modelComboBox">%s%s</widget>' % (
        param("model"), prop("toolTip", "string", "Models from the KneePipeline registry."))),
    ("Shape model (NSM):", combo("nsmComboBox", "nsm", ["none", "bone_cartilage", "bone_only", "both"],
                                 "Fit the neural shape model(s) of the femur and compute the B-score.")),
    ("T2 mapping:", w("QCheckBox", "t2CheckBox", param("t2Enabled"), prop("text", "string", "Fit a T2 map"))),
    ("Echo images:", path_edit("echoesPathLineEdit", "echoesPath", "ctkPathLineEdit::Files|ctkPathLineEdit::Dirs|ctkPathLineEdit::Readable",
                               "Multi-echo spin-echo series: a DICOM folder, a zip, or a 4D volume.")),
    ("Device:", combo("deviceComboBox", "device", ["auto", "cuda", "mps", "cpu"],
                      "auto: an NVIDIA GPU (cuda), else an Apple Silicon GPU (mps, with the CPU for operations it "
                      "lacks), else the CPU.")),
    ("Speed:", combo("profileComboBox", "profile", ["default", "fast"],
                     "fast: nnU-Net tile step 1.0, 2-3x fewer tiles; less accurate where tile seams cross a "
                     "structure (docs/SPEED.md). default: the tile step below.")),
    ("Output folder:", path_edit("outputDirectoryPathLineEdit", "outputDirectory", "ctkPathLineEdit::Dirs|ctkPathLineEdit::Writable",
                                 "Where the run writes its results (empty: a new folder under Slicer's temporary folder).")),
    ("", w("QCheckBox", "replaceCheckBox", param("replaceResults"),
           prop("text", "string", "Replace results loaded earlier from the same folder"))),
]))

advanced = collapsible("advancedCollapsibleButton", "Advanced", form("advancedFormLayout", [
    ("Bone smoothing:", dspin("boneSmoothSpinBox", "boneSmoothVarMm2", 0, 5, 0.05, 0.5, 3, " mm²",
                              "Gaussian variance before contouring bones.")),
    ("Cartilage smoothing:", dspin("cartilageSmoothSpinBox", "cartilageSmoothVarMm2", 0, 5, 0.05, 0.3125, 4, " mm²",
                                   "Gaussian variance before contouring cartilage.")),
    ("Test-time augmentation:", w("QCheckBox", "ttaCheckBox", param("tta"), prop("text", "string", "Mirror (slower)"))),
    ("Tile step size:", dspin("stepSizeSpinBox", "stepSize", 0.1, 1.0, 0.05, 0.5, 2, "",
                              "Sliding-window step (smaller: slower, slightly better).")),
    ("Time limit:", w("QSpinBox", "timeoutSpinBox", param("timeoutMinutes"), prop("minimum", "number", 0),
                      prop("maximum", "number", 1440), prop("value", "number", 0), prop("suffix", "string", " min"),
                      prop("specialValueText", "string", "none"))),
], ), collapsed=True)

env = collapsible("environmentCollapsibleButton", "Pipeline environment", form("environmentFormLayout", [
    ("Python:", path_edit("pythonPathLineEdit", "pythonEnvironment", "ctkPathLineEdit::Files|ctkPathLineEdit::Dirs|ctkPathLineEdit::Executable",
                          "The separate Python environment that runs the pipeline (a venv/conda folder or its python).")),
    (None, hbox("environmentButtonsLayout", [
        w("QPushButton", "setupEnvButton", prop("text", "string", "Set up"),
          prop("toolTip", "string", "Create a new environment (with its own Python, downloaded by uv) and install the pipeline with the right torch for this computer.")),
        w("QPushButton", "checkEnvButton", prop("text", "string", "Check"),
          prop("toolTip", "string", "Check that the chosen Python has what the pipeline needs."))])),
    (None, w("QLabel", "envStatusLabel", prop("text", "string", ""), prop("wordWrap", "bool", "true"))),
]), collapsed=True)

run = hbox("runButtonsLayout", [
    w("QPushButton", "runButton", prop("text", "string", "Run"), prop("enabled", "bool", "false")),
    w("QPushButton", "cancelButton", prop("text", "string", "Cancel"), prop("enabled", "bool", "false")),
    w("QPushButton", "loadRunButton", prop("text", "string", "Load results folder...")),
    w("QPushButton", "sampleDataButton", prop("text", "string", "Try with sample data"),
      prop("toolTip", "string", "Download the sample knee's segmentation (92 MB, once) and analyse it (no model download)."))])

progress = ('<layout class="QVBoxLayout" name="progressLayout"><item>%s</item><item>%s</item></layout>' % (
    w("QProgressBar", "progressBar", prop("value", "number", 0), prop("textVisible", "bool", "true")),
    w("QLabel", "stepLabel", prop("text", "string", ""), prop("wordWrap", "bool", "true"))))

log = collapsible("logCollapsibleButton", "Log", '<layout class="QVBoxLayout" name="logLayout"><item>%s</item></layout>' %
                  w("QPlainTextEdit", "logTextEdit", prop("readOnly", "bool", "true"),
                    prop("maximumBlockCount", "number", 5000)), collapsed=True)

results = collapsible("resultsCollapsibleButton", "Results", '<layout class="QVBoxLayout" name="resultsLayout">'
                      '<item>%s</item><item>%s</item><item>%s</item></layout>' % (
                          w("QLabel", "resultsLabel", prop("text", "string", "No results yet."), prop("wordWrap", "bool", "true"),
                            prop("textInteractionFlags", "set", "Qt::TextSelectableByMouse")),
                          w("QPushButton", "openReportButton", prop("text", "string", "Open report"),
                            prop("enabled", "bool", "false")),
                          w("QPushButton", "compareRunButton", prop("text", "string", "Compare with an earlier run..."),
                            prop("enabled", "bool", "false"),
                            prop("toolTip", "string", "Choose the run folder of an earlier visit of this knee: the "
                                 "earlier bones are shown coloured by cartilage change (blue = loss), with a "
                                 "regional change table."))))

body = "".join("<item>%s</item>" % x for x in [inputs, settings, advanced, env]) + \
    "<item>%s</item><item>%s</item>" % (run, progress) + \
    "".join("<item>%s</item>" % x for x in [log, results]) + \
    '<item><spacer name="verticalSpacer"><property name="orientation"><enum>Qt::Vertical</enum></property></spacer></item>'

ui = """<?xml version="1.0" encoding="UTF-8"?>
<ui version="4.0">
 <class>KneePipeline</class>
 <widget class="qMRMLWidget" name="KneePipeline">
  <property name="geometry"><rect><x>0</x><y>0</y><width>420</width><height>900</height></rect></property>
  <layout class="QVBoxLayout" name="verticalLayout">%s</layout>
 </widget>
 <customwidgets>
  <customwidget><class>ctkCollapsibleButton</class><extends>QWidget</extends><header>ctkCollapsibleButton.h</header><container>1</container></customwidget>
  <customwidget><class>ctkPathLineEdit</class><extends>QWidget</extends><header>ctkPathLineEdit.h</header></customwidget>
  <customwidget><class>qMRMLNodeComboBox</class><extends>QWidget</extends><header>qMRMLNodeComboBox.h</header></customwidget>
  <customwidget><class>qMRMLWidget</class><extends>QWidget</extends><header>qMRMLWidget.h</header><container>1</container></customwidget>
 </customwidgets>
 <resources/>
 <connections>
  <connection><sender>KneePipeline</sender><signal>mrmlSceneChanged(vtkMRMLScene*)</signal><receiver>inputVolumeSelector</receiver><slot>setMRMLScene(vtkMRMLScene*)</slot></connection>
  <connection><sender>KneePipeline</sender><signal>mrmlSceneChanged(vtkMRMLScene*)</signal><receiver>inputLabelsSelector</receiver><slot>setMRMLScene(vtkMRMLScene*)</slot></connection>
 </connections>
</ui>
""" % body

if __name__ == "__main__":
    import xml.dom.minidom

    pretty = xml.dom.minidom.parseString(ui.encode("utf-8")).toprettyxml(indent=" ", encoding="UTF-8").decode("utf-8")
    pretty = "\n".join(l for l in pretty.splitlines() if l.strip())
    with open(OUT, "w", encoding="utf-8") as fh:
        fh.write(pretty + "\n")
    print("wrote", os.path.normpath(OUT))
