"""Dataset readers (image folders, YOLO, COCO): no TensorFlow, so validate and the gates run on the device too."""
