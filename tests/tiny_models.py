"""Tiny configs of every reference model, shared by the test files."""

from jaxprune import models as M

# Tiny configs: few channels, small images, one block per stage.
TINY = {
    "SmallCNN": lambda: M.SmallCNN(channels=(4, 8), num_classes=3, image_size=8),
    "MLP": lambda: M.MLP(features=(8, 6), num_classes=3, in_features=5),
    "CifarResNet": lambda: M.CifarResNet(stage_sizes=(1, 1), stage_widths=(4, 8), num_classes=3, image_size=8),
    "ResNet": lambda: M.resnet50(num_classes=3, stage_sizes=(1, 1), stage_widths=(2, 4), stem_width=4, image_size=16),
    "ViT": lambda: M.vit_tiny_test(num_classes=3, image_size=8, num_layers=1),
    "BertEncoder": lambda: M.bert_tiny_test(num_hidden_layers=1),
    "MobileNetBlockNet": lambda: M.MobileNetBlockNet(
        block_specs=((1, 4, 1), (2, 4, 1), (2, 8, 2)), stem_width=4, last_width=8, num_classes=3, image_size=8
    ),
    "ConcatNet": lambda: M.ConcatNet(
        stem_width=4, branch_widths=(2, 3), growth=2, num_dense=2, transition_width=6, num_classes=3, image_size=8
    ),
}
